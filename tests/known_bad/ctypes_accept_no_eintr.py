"""Defect: the master accepts through ctypes ``accept4`` and does not retry EINTR.

The timeout is put on the listener as ``SO_RCVTIMEO`` and ``accept4`` called
through ctypes (for an atomic SOCK_CLOEXEC, as a C binding would); Python's own
EINTR retry (PEP 475) does not cover ctypes calls, so a handled signal makes
``dispatch`` raise ``InterruptedError``. Breaks FLT-03.
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import struct

from reference import MasterProxy

BREAKS = frozenset({"FLT-03"})

_libc = ctypes.CDLL(None, use_errno=True)
_TIMEVAL = struct.Struct("@ll")


class CtypesAcceptProxy(MasterProxy):
    def _accept_fd(self, listener: socket.socket, timeout: float | None) -> int:
        if listener.fileno() < 0:
            raise OSError(errno.EBADF, "dispatch: the listener is closed")
        if timeout is None:
            tv = _TIMEVAL.pack(0, 0)
        else:
            micros = max(int(timeout * 1_000_000), 1)
            tv = _TIMEVAL.pack(micros // 1_000_000, micros % 1_000_000)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, tv)
        fd = int(_libc.accept4(listener.fileno(), None, None, socket.SOCK_CLOEXEC))
        if fd >= 0:
            return fd
        code = ctypes.get_errno()
        if code in (errno.EAGAIN, errno.EWOULDBLOCK):
            raise TimeoutError(errno.ETIMEDOUT, f"dispatch: no connection within {timeout}s")
        # The defect: EINTR is raised (as InterruptedError) instead of retried.
        raise OSError(code, f"dispatch: accept4() failed: {os.strerror(code)}")
