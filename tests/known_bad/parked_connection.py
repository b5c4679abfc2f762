"""Defect: with no live worker, the connection is parked instead of closed.

``dispatch`` raises as it should, but keeps the accepted connection "for when a
worker comes back", so its client is left hanging. Breaks FP-09 (the client
sees neither EOF nor a reset).

FLT-01 fails as well: with ``sendmsg`` failing (EPIPE) on every channel, all
workers look dead and the client is parked instead of seeing EOF; and FLT-05
("clients-served-or-closed", after every worker was killed).
"""

from __future__ import annotations

import os
import socket
import time

from reference import MasterProxy, NoLiveWorkerError

BREAKS = frozenset({"FP-09", "FLT-01", "FLT-05"})


class ParkingProxy(MasterProxy):
    def __init__(self, host: str = "127.0.0.1") -> None:
        super().__init__(host)
        self._parked: list[int] = []

    def dispatch(self, listener: socket.socket, timeout: float | None = None) -> int:
        if not self._master_ends:
            return super().dispatch(listener, timeout)  # the reference's error
        if not self._sealed:
            self._seal()
        deadline = None if timeout is None else time.monotonic() + timeout
        fd = self._accept_fd(listener, timeout)
        try:
            index = self._hand_over(fd, deadline)
        except NoLiveWorkerError:
            self._parked.append(fd)  # the defect: kept for a worker that never comes
            raise
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
        return index

    def close(self) -> None:
        parked, self._parked = self._parked, []
        for fd in parked:
            os.close(fd)
        super().close()
