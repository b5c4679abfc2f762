"""Defect: the master accepts every connection and keeps it; no worker ever gets one.

The issue "Root causes, not cascades" found this shape in a real third-party
PHP proxy: its master's ``accept()`` returned the connection to the caller
instead of passing it on. Here ``dispatch`` accepts, keeps the socket, and
returns the next index round-robin without sending anything. Its root causes
fail: FP-02 (no connection the master accepted reaches a worker), FP-03 (the
master keeps an fd of each "dispatched" connection) and FP-09 (with every
worker dead, dispatch still claims success instead of raising OSError: it
never talks to a worker, so it cannot notice).

Everything whose check needs a served connection is blocked by FP-02 (see
``BLOCKED``) and decided at once, while the evidence that needs no service is
still judged and passes: the listener and inputs (SP-01..SP-08, SP-14), the
setup faults (SP-18, SP-19, FLT-04 up to its last served check), the queue's
life and mode (IPC-01..IPC-06, IPC-09).
"""

from __future__ import annotations

import socket

from reference import MasterProxy

from . import SERVED_CHECKS

BREAKS = frozenset({"FP-02", "FP-03", "FP-09"})
#: Served-connection checks: blocked by FP-02, the root cause.
BLOCKED = dict.fromkeys(SERVED_CHECKS, "FP-02")


class KeepEverythingMasterProxy(MasterProxy):
    def __init__(self, host: str = "127.0.0.1") -> None:
        super().__init__(host)
        self._kept: list[socket.socket] = []
        self._next = 0

    def dispatch(self, listener: socket.socket, timeout: float | None = None) -> int:
        if not self._master_ends:
            return super().dispatch(listener, timeout)  # the reference's error
        fd = self._accept_fd(listener, timeout)
        self._kept.append(socket.socket(fileno=fd))  # the defect: "returned to the caller"
        self._next = (self._next + 1) % len(self._master_ends)
        return self._next

    def close(self) -> None:
        for conn in self._kept:
            conn.close()
        self._kept = []
        super().close()
