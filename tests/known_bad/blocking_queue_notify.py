"""Defect: after each hand-over the master posts a notice with a blocking ``msgsnd``.

The notice ("fd sent to worker i", for monitoring) is never read, so once the
queue is full, ``msgsnd`` blocks the master for good. Breaks IPC-08 (SHOULD, a
warning): with a tiny ``msgmnb`` the queue fills at once and dispatch hangs.
"""

from __future__ import annotations

import contextlib
import socket

from reference import MasterProxy

BREAKS = frozenset({"IPC-08"})
NOTICE_MTYPE = 2


class BlockingNoticeProxy(MasterProxy):
    def dispatch(self, listener: socket.socket, timeout: float | None = None) -> int:
        index = super().dispatch(listener, timeout)
        if self._queue is not None and self._queue.alive:
            with contextlib.suppress(OSError):
                # The defect: block=True, no IPC_NOWAIT.
                self._queue.send(NOTICE_MTYPE, str(index).encode(), block=True)
        return index
