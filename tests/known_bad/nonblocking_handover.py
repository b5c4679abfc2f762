"""Defect: the master makes its copy of the connection non-blocking before passing it.

O_NONBLOCK is a file status flag, shared by every descriptor of the open file,
so the worker receives a non-blocking socket while Python's ``socket(fileno=)``
believes it is blocking. Breaks SP-20 (the accepted socket is not blocking).
"""

from __future__ import annotations

import os
import socket

from reference import MasterProxy

BREAKS = frozenset({"SP-20"})


class NonBlockingHandoverProxy(MasterProxy):
    def _accept_fd(self, listener: socket.socket, timeout: float | None) -> int:
        fd = super()._accept_fd(listener, timeout)
        os.set_blocking(fd, False)  # the defect: "a stuck client must never block the master"
        return fd
