"""AcmeMasterProxy with one defect, to show the gate failing: inheritable connections.

The worker receives each connection without ``MSG_CMSG_CLOEXEC`` and never
marks it non-inheritable, so every connection a worker holds leaks into any
program it ``exec``s (a CGI script, a log rotator). The conformance gate
fails on exactly two MUST requirements: FP-05 (received sockets are
close-on-exec) and SP-20 (sockets returned by ``accept()`` are
non-inheritable).
"""

from __future__ import annotations

import array
import socket

from acme_proxy import AcmeMasterProxy as _Correct
from acme_proxy.proxy import ANCILLARY_SPACE

__all__ = ["AcmeMasterProxy"]


class AcmeMasterProxy(_Correct):
    def _receive(self, chan: socket.socket) -> tuple[bytes, list[int], int]:
        msg, ancillary, flags, _ = chan.recvmsg(1, ANCILLARY_SPACE)  # the defect: no CLOEXEC
        fds = array.array("i")
        for level, kind, data in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
        return msg, list(fds), flags
