"""Defect: once channels exist, the master leaves removing the queue to the workers.

"The last worker to leave removes it": a worker's ``close()`` removes the queue,
the master's ``close()`` does not once ``open_channels`` ran. Breaks IPC-09
(workers killed with SIGKILL never remove it), IPC-02 (closed after
``open_channels`` but before any worker exists, the master leaves it), FP-07
and IPC-10 (the first worker that exits removes the queue the master and the
other workers still use).

May break SP-12 (``MAY_BREAK``): there the workers are alive when the master
closes; they read EOF and remove the queue within milliseconds, usually
before the check lists the IPC objects, so the outcome is a race.

FLT-05 fails as well: after its worker kills, the teardown finds the queue.
"""

from __future__ import annotations

import contextlib

from fdpass_conformance import sysv
from reference import MasterProxy

BREAKS = frozenset({"FP-07", "IPC-02", "IPC-09", "IPC-10", "FLT-05"})
MAY_BREAK = frozenset({"SP-12"})


class WorkersRemoveQueueProxy(MasterProxy):
    def close(self) -> None:
        queue = self._queue
        if queue is not None and self._index is not None:
            queue.removed = True
            with contextlib.suppress(OSError):
                sysv.msgrm(queue.id)  # a worker removes it...
        elif self._master_ends:
            self._queue = None  # ...the defect: the master with channels does not
        super().close()
