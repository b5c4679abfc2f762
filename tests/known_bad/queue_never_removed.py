"""Defect: ``close()`` never removes the message queue.

Seed round 2 #2 and round 3 #2: the queue from ``msg_get_queue()`` was never
stored or removed, a kernel resource that outlives the process. Breaks
IPC-02 (close leaves the queue), IPC-09 (likewise after the workers were
killed) and SP-12 (close does not release every IPC object).

FLT-05 fails as well: its teardown invariant finds the queue after ``close()``.
"""

from __future__ import annotations

from reference import MasterProxy

BREAKS = frozenset({"SP-12", "IPC-02", "IPC-09", "FLT-05"})
SEED = "round 2 #2, round 3 #2: msg_get_queue() queue never stored or removed"


class QueueLeakProxy(MasterProxy):
    def close(self) -> None:
        self._queue = None  # the defect: forgotten, not removed
        super().close()
