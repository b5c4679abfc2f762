"""Defect: ``close()`` removes the queue by id every time it runs.

Breaks SP-12: the second ``close()`` raises ``OSError(EINVAL)`` from ``msgctl``
because the queue is already gone. For the same reason IPC-07 fails: once the
queue was removed from outside, the master's (first) ``close()`` raises instead
of succeeding.
"""

from __future__ import annotations

import os

from fdpass_conformance import sysv
from reference import MasterProxy

BREAKS = frozenset({"SP-12", "IPC-07"})


class CloseTwiceFailsProxy(MasterProxy):
    def close(self) -> None:
        queue = self._queue
        if queue is not None and os.getpid() == queue.owner_pid:
            sysv.msgrm(queue.id)  # the defect: raises if the queue is already gone
            queue.removed = True
        for sock in (*self._listeners, *self._master_ends, *self._worker_ends, self._chan):
            if sock is not None:
                sock.close()
        self._listeners, self._master_ends, self._worker_ends = [], [], []
        self._chan = None
        # and self._queue is kept, so the next close() tries again
