"""Just enough System V message queue for idle tokens: libc through ctypes.

Linux and macOS export msgget/msgsnd/msgrcv/msgctl with the same flag
values. Every failure raises ``OSError`` with the errno of the failing call
(a queue that cannot be created because of ``kernel.msgmni`` must say ENOSPC).
"""

from __future__ import annotations

import ctypes
import errno
import os

IPC_PRIVATE = 0
IPC_CREAT = 0o1000
IPC_NOWAIT = 0o4000
IPC_RMID = 0

_libc = ctypes.CDLL(None, use_errno=True)
_libc.msgget.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.msgget.restype = ctypes.c_int
_libc.msgsnd.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_libc.msgsnd.restype = ctypes.c_int
_libc.msgrcv.argtypes = [
    ctypes.c_int,
    ctypes.c_void_p,
    ctypes.c_size_t,
    ctypes.c_long,
    ctypes.c_int,
]
_libc.msgrcv.restype = ctypes.c_ssize_t
_libc.msgctl.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_void_p]
_libc.msgctl.restype = ctypes.c_int


class _Message(ctypes.Structure):
    _fields_ = [("mtype", ctypes.c_long), ("index", ctypes.c_int)]


def _error(call: str) -> OSError:
    code = ctypes.get_errno()
    return OSError(code, os.strerror(code), call)  # the caller names its own step


def create_queue() -> int:
    """A new private queue, readable and writable by its owner only."""
    qid = int(_libc.msgget(IPC_PRIVATE, IPC_CREAT | 0o600))
    if qid < 0:
        raise _error("msgget")
    return qid


def remove_queue(qid: int) -> None:
    if _libc.msgctl(qid, IPC_RMID, None) < 0:
        raise _error("msgctl(IPC_RMID)")


def post(qid: int, index: int) -> None:
    """Post worker ``index``'s idle token without blocking (EAGAIN when full)."""
    msg = _Message(1, index)
    size = ctypes.sizeof(_Message) - ctypes.sizeof(ctypes.c_long)
    if _libc.msgsnd(qid, ctypes.byref(msg), size, IPC_NOWAIT) < 0:
        raise _error("msgsnd")


def take(qid: int) -> int | None:
    """The oldest idle token, or None when there is none."""
    msg = _Message()
    size = ctypes.sizeof(_Message) - ctypes.sizeof(ctypes.c_long)
    if _libc.msgrcv(qid, ctypes.byref(msg), size, 1, IPC_NOWAIT) < 0:
        err = _error("msgrcv")
        if err.errno == errno.ENOMSG:
            return None
        raise err
    return int(msg.index)
