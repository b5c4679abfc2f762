"""What ``pytest_configure`` validated, kept in the config's stash for the hooks after it.

A module of its own so that the options hooks (``plugin``) and the conformance
run (``conformance``) both read it without importing each other.
"""

from __future__ import annotations

import pytest

from .loading import ImplSpec
from .report.baseline import Baseline

#: The validated implementations of this run, in command-line order.
IMPLS_KEY = pytest.StashKey[list[ImplSpec]]()

#: The --fdpass-baseline, loaded and checked at configure time.
BASELINE_KEY = pytest.StashKey[Baseline]()


def get_impls(config: pytest.Config) -> list[ImplSpec]:
    """The validated ``--fdpass-impl`` implementations (empty before configure)."""
    impls: list[ImplSpec] = config.stash.get(IMPLS_KEY, [])
    return list(impls)
