"""Defect: the worker judges an fd message by its fd list alone, ignoring MSG_CTRUNC.

A message without an fd is taken for the end of the channel, and of several
fds the first is kept and the others are neither returned nor closed.
Breaks FP-14 (with a full fd table the kernel drops the fd and sets
MSG_CTRUNC; the worker takes that for EOF and stops accepting for good) and
FLT-06 (the extra fds of an oversized message leak).
"""

from __future__ import annotations

import array
import socket

from reference import MasterProxy

BREAKS = frozenset({"FP-14", "FLT-06"})

_CMSG_CLOEXEC: int = getattr(socket, "MSG_CMSG_CLOEXEC", 0)


class CtruncIgnoredProxy(MasterProxy):
    def _recv_fd(self, chan: socket.socket) -> tuple[bytes, int]:
        fds = array.array("i")
        msg, ancdata, _flags, _ = chan.recvmsg(1, socket.CMSG_SPACE(fds.itemsize), _CMSG_CLOEXEC)
        for level, kind, data in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
        # The defect: _flags (MSG_CTRUNC) is never looked at, nor are fds[1:].
        if not fds:
            raise EOFError("accept: the master closed the channel")
        return msg, fds[0]
