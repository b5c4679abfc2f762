"""Defect: ``open_channels`` does not validate the worker count.

``open_channels(0)`` and ``(-1)`` open no channel and return, ``(True)`` opens
one; only non-numbers fail, later, inside ``range``. Breaks FP-16 (SHOULD,
a warning).
"""

from __future__ import annotations

from reference import MasterProxy

BREAKS = frozenset({"FP-16"})


class UncheckedCountProxy(MasterProxy):
    @staticmethod
    def _validate_workers(workers: int) -> int:
        return workers  # the defect: no isinstance(workers, int) check, no "at least 1" check
