"""Defect: dispatch always picks the first live worker.

The idle tokens are ignored and the round-robin position never advances, so
every connection goes to worker 0 while it lives. Breaks SP-13 (sequential load
does not reach every worker) and FP-12 (a busy worker still gets new
connections); both are SHOULD requirements, reported as warnings.
"""

from __future__ import annotations

from reference import MasterProxy

BREAKS = frozenset({"SP-13", "FP-12"})


class FirstWorkerProxy(MasterProxy):
    def _pick(self, busy: set[int]) -> int | None:
        for index in range(len(self._master_ends)):  # the defect: always from 0
            if index not in self._dead and index not in busy:
                return index
        return None
