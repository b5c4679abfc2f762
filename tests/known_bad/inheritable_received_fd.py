"""Defect: the worker receives fds without ``MSG_CMSG_CLOEXEC``.

The received connection is inheritable, so a helper program the worker runs
would get a copy of it. Breaks FP-05 (received sockets are not close-on-exec)
and SP-20 (accepted sockets must be non-inheritable).
"""

from __future__ import annotations

import array
import errno
import os
import socket

from reference import MasterProxy

BREAKS = frozenset({"FP-05", "SP-20"})


class InheritableFdProxy(MasterProxy):
    def _recv_fd(self, chan: socket.socket) -> tuple[bytes, int]:
        fds = array.array("i")
        # The defect: flags 0 instead of MSG_CMSG_CLOEXEC (and no set_inheritable after).
        msg, ancdata, flags, _ = chan.recvmsg(1, socket.CMSG_SPACE(fds.itemsize), 0)
        for level, kind, data in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
        if flags & socket.MSG_CTRUNC or len(fds) != 1 or not msg:
            for fd in fds:
                os.close(fd)
            if not msg and not fds:
                raise EOFError("accept: the master closed the channel")
            raise OSError(errno.EMFILE, "accept: recvmsg truncated the passed fd (MSG_CTRUNC)")
        return msg, fds[0]
