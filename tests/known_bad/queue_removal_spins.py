"""Defect: the master never gives up on a queue that was removed under it.

When taking an idle token fails with EIDRM/EINVAL, the master takes it for
"the queue is being recreated" and tries again every 10 ms, forever. Breaks
IPC-07: after ``ipcrm`` of the queue, ``dispatch`` never returns.
"""

from __future__ import annotations

import time

from reference import MasterProxy

BREAKS = frozenset({"IPC-07"})


class QueueRetryProxy(MasterProxy):
    def _take_token(self) -> tuple[int, int] | None:
        while True:
            token = super()._take_token()
            if self._queue is None or self._queue.alive:
                return token
            # The reference found the queue gone and fell back to round-robin.
            self._queue.alive = True  # the defect: "it will be back"
            time.sleep(0.01)
