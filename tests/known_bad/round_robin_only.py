"""Defect: blind round-robin; the idle tokens on the queue are never read.

Breaks FP-12 (SHOULD, a warning): a worker busy with an open connection still
gets every W-th new connection, whose client waits behind it.
"""

from __future__ import annotations

from reference import MasterProxy

BREAKS = frozenset({"FP-12"})


class RoundRobinProxy(MasterProxy):
    def _pick(self, busy: set[int]) -> int | None:
        return self._pick_round_robin(busy)  # the defect: no look at the idle tokens
