"""Defect: ``dispatch`` returns the round-robin cursor, not the worker it chose.

With more than one worker the returned index is always the next worker's.
Breaks FP-04 (the returned index is not the worker that got the connection),
FLT-01 (its check of a re-routed send compares the returned index with the
worker that served the client; spec, FLT-01: "the returned index must match
the worker that reported the connection (FP-04)") and FLT-05 (its
"answers-match-clients" invariant: the answer comes from another worker than
the one dispatch named).
"""

from __future__ import annotations

from reference import MasterProxy

BREAKS = frozenset({"FP-04", "FLT-01", "FLT-05"})


class WrongIndexProxy(MasterProxy):
    def _hand_over(self, fd: int, deadline: float | None) -> int:
        index = super()._hand_over(fd, deadline)
        self._next = index + 1  # "the next round-robin turn starts after it"
        return self._next % len(self._master_ends)  # the defect: the cursor, not the index
