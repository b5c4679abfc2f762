"""``python -m fdpass_conformance.bench``: the same as the ``fdpass-bench`` command."""

from __future__ import annotations

from .cli import main

raise SystemExit(main())
