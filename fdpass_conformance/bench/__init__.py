"""``fdpass-bench``: dispatch performance of proxies, measured side by side in one run.

Absolute timings on a shared machine drift from minute to minute, so the
bench never reports a number alone: every implementation (and a bare
``send_fds``/``recv_fds`` floor) is measured in the same run, repetitions
interleaved, and the report shows ratios taken within each repetition.
Entry point: :func:`fdpass_conformance.bench.cli.main` (``python -m
fdpass_conformance.bench``).
"""

from __future__ import annotations

__all__: list[str] = []
