"""A correct MasterProxy whose workers receive into a control buffer sized for one fd.

Written the way independent authors write it: ``socket.recv_fds(chan, 1, 1)``,
whose control buffer is ``CMSG_LEN(sizeof(int))``. The kernel can never put a
second fd into it: a message carrying more comes back with the first fd and
``MSG_CTRUNC``, the rest dropped. So FLT-06's "one fd too many" must reach
this receiver as exactly that, and it passes (the truncated transfer is closed
and reported as an OSError); it is listed with the references, which pass
every requirement that applies.

``recv_fds`` drops ``MSG_CMSG_CLOEXEC`` (facts.md: CPython ignores its
flags), so the received fd is made non-inheritable right away (FP-05).
"""

from __future__ import annotations

import errno
import os
import socket

from reference import MasterProxy


class ExactBufferMasterProxy(MasterProxy):
    def _recv_fd(self, chan: socket.socket) -> tuple[bytes, int]:
        msg, fds, flags, _ = socket.recv_fds(chan, 1, 1)
        for fd in fds:
            os.set_inheritable(fd, False)
        if flags & socket.MSG_CTRUNC or len(fds) != 1 or not msg:
            for fd in fds:
                os.close(fd)
            if not msg and not fds:
                raise EOFError("accept: the master closed the channel")
            if flags & socket.MSG_CTRUNC:
                raise OSError(
                    errno.EMFILE,
                    "accept: recvmsg truncated the passed fds (MSG_CTRUNC); connection dropped",
                )
            raise OSError(errno.EBADMSG, f"accept: expected 1 fd from the master, got {len(fds)}")
        return msg, fds[0]
