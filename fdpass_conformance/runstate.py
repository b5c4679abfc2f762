"""The run's validated options: one object, built once at configure time, read by every hook.

A module of its own so that the options hooks (``plugin``), the conformance run
(``conformance``) and the suites all read the same validated values without
importing each other and without asking ``config.getoption`` again (where a
value could be read raw, unvalidated, or with another default).
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from .loading import ImplSpec
from .report.baseline import Baseline

#: Per-test deadline of contract tests, in seconds, unless the ini ``fdpass_timeout``
#: or the test's own ``@pytest.mark.timeout`` says otherwise.
DEFAULT_TIMEOUT = 60.0


@dataclass(frozen=True)
class RunOptions:
    """What ``pytest_configure`` accepted; the defaults are a run without fdpass options."""

    impls: tuple[ImplSpec, ...] = ()
    timeout: float = DEFAULT_TIMEOUT
    strict: bool = False
    #: ``--fdpass-only`` prefixes, upper-cased.
    only: tuple[str, ...] = ()
    report_paths: tuple[str, ...] = ()
    baseline: Baseline | None = None
    baseline_strict: bool = False
    baseline_write: str | None = None
    hypothesis_profile: str = "default"

    def selects(self, requirement: str) -> bool:
        """Whether ``--fdpass-only`` (if given) selects this requirement ID."""
        return not self.only or any(requirement.startswith(p) for p in self.only)


RUN_KEY = pytest.StashKey[RunOptions]()


def run_options(config: pytest.Config) -> RunOptions:
    """The validated options (the defaults before configure, e.g. under ``--help``)."""
    return config.stash.get(RUN_KEY, RunOptions())


def get_impls(config: pytest.Config) -> list[ImplSpec]:
    """The validated ``--fdpass-impl`` implementations, in command-line order."""
    return list(run_options(config).impls)
