"""Defect: the master keeps its copy of every dispatched connection.

Seed round 1 reply: after sending the descriptor, the master's ``accept()``
still wrapped the accepted socket in a ``Connection`` and returned it. Here the
master keeps the socket object (released only by ``close()``), so:
FP-03 (the master holds an fd of the dispatched connection), SP-11 (the client
sees no EOF when the worker closes, since the master's copy keeps it open) and
SP-16 (one fd more in the master per connection).

Checks of a client nobody answered fail for the same reason: FLT-01 (the
master's fd count after a failed send), FLT-05 ("clients-served-or-closed"),
FLT-06 and FP-14 (the client of a dropped fd never sees EOF: the master still
holds the connection). A client that was answered but whose connection never
ends is SP-11's alone (``left_hanging`` in the suites), so IPC-07, IPC-10 and
FLT-02, whose clients are all answered, pass.
"""

from __future__ import annotations

import os
import socket
import time

from reference import MasterProxy

BREAKS = frozenset({"SP-11", "SP-16", "FP-03", "FP-14", "FLT-01", "FLT-05", "FLT-06"})
SEED = "round 1 reply: accept() wraps the master's accepted socket in a Connection"


class KeepingMasterProxy(MasterProxy):
    def __init__(self, host: str = "127.0.0.1") -> None:
        super().__init__(host)
        self._served: list[socket.socket] = []

    def dispatch(self, listener: socket.socket, timeout: float | None = None) -> int:
        if not self._master_ends:
            return super().dispatch(listener, timeout)  # the reference's error
        if not self._sealed:
            self._seal()
        deadline = None if timeout is None else time.monotonic() + timeout
        fd = self._accept_fd(listener, timeout)
        try:
            index = self._hand_over(fd, deadline)
        except BaseException:
            os.close(fd)
            raise
        self._served.append(socket.socket(fileno=fd))  # the defect: kept, "for the caller"
        return index

    def close(self) -> None:
        for conn in self._served:
            conn.close()
        self._served = []
        super().close()
