"""Defect: the worker's control buffer has room for four fds, and it keeps only the first.

``MSG_CTRUNC`` is handled (a full fd table is reported as an OSError), but of
a message that carries more than one fd, which the buffer lets the kernel
deliver, fds[1:] are neither returned nor closed. Breaks FLT-06: the extra fd
of an oversized message leaks in the worker. The same receiver with a buffer
sized for one fd (``_exact_buffer``) is correct, because the kernel could
never hand it the extra fd.
"""

from __future__ import annotations

import array
import errno
import socket

from reference import MasterProxy

BREAKS = frozenset({"FLT-06"})

_CMSG_CLOEXEC: int = getattr(socket, "MSG_CMSG_CLOEXEC", 0)
_ROOM = socket.CMSG_SPACE(4 * array.array("i").itemsize)


class FirstFdOnlyProxy(MasterProxy):
    def _recv_fd(self, chan: socket.socket) -> tuple[bytes, int]:
        fds = array.array("i")
        msg, ancdata, flags, _ = chan.recvmsg(1, _ROOM, _CMSG_CLOEXEC)
        for level, kind, data in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
        if flags & socket.MSG_CTRUNC:
            for fd in fds:
                socket.close(fd)
            raise OSError(errno.EMFILE, "accept: recvmsg truncated the passed fd (MSG_CTRUNC)")
        if not fds:
            raise EOFError("accept: the master closed the channel")
        return msg, fds[0]  # the defect: fds[1:] are dropped, still open
