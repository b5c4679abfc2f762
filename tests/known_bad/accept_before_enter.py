"""Defect: ``accept()`` assumes ``enter_worker()`` already ran.

Seed round 3 #5: the typed property ``$sendSocket`` was uninitialised until
``createSocket()``, so ``accept()`` before it was a fatal error. Here ``accept``
in a process that never called ``enter_worker`` dies with ``AttributeError``
("'NoneType' object has no attribute 'recvmsg'"). Breaks FP-15.
"""

from __future__ import annotations

import socket
from typing import cast

from reference import MasterProxy

BREAKS = frozenset({"FP-15"})
SEED = "round 3 #5: uninitialised $sendSocket, fatal error if accept() runs first"


class EagerAcceptProxy(MasterProxy):
    def accept(self, listener: socket.socket) -> socket.socket:
        chan = cast(socket.socket, self._chan)  # the defect: "set by enter_worker()"
        self._announce_idle(chan)
        _tag, fd = self._recv_fd(chan)
        self._received += 1
        return socket.socket(fileno=fd)
