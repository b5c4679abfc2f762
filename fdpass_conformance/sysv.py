"""A small ctypes binding of System V message queues.

Why not ``sysv_ipc``: when ``msgget`` fails with ENOSPC (the msgmni limit,
which IPC-06 checks) it raises an ``OSError`` whose ``errno`` is ``None``.
Calling libc directly keeps the errno of the failing call, costs no compiled
dependency, and works on Linux and macOS alike (both export msgget, msgsnd,
msgrcv and msgctl, with the same flag values).
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct

IPC_PRIVATE = 0
IPC_CREAT = 0o1000
IPC_EXCL = 0o2000
IPC_NOWAIT = 0o4000
IPC_RMID = 0
MSG_NOERROR = 0o10000

#: Largest message body this binding sends or receives; tokens and test
#: payloads are tiny, and msgmax is 8192 on Linux and 2048 on macOS.
MAX_BODY = 2048

_LONG = struct.Struct("l")

_libc = ctypes.CDLL(None, use_errno=True)
_msgget = _libc.msgget
_msgget.argtypes = [ctypes.c_int, ctypes.c_int]
_msgget.restype = ctypes.c_int
_msgsnd = _libc.msgsnd
_msgsnd.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_msgsnd.restype = ctypes.c_int
_msgrcv = _libc.msgrcv
_msgrcv.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_long, ctypes.c_int]
_msgrcv.restype = ctypes.c_ssize_t
_msgctl = _libc.msgctl
_msgctl.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_void_p]
_msgctl.restype = ctypes.c_int


def _fail(step: str) -> OSError:
    """Build the OSError of the libc call that just failed, naming the step."""
    code = ctypes.get_errno()
    return OSError(code, f"{step} failed: {os.strerror(code)}")


def msgget(key: int = IPC_PRIVATE, mode: int = 0o600, *, create: bool = True) -> int:
    """Create (or open) a queue and return its id; raise OSError with the real errno."""
    flags = mode & 0o777
    if create:
        flags |= IPC_CREAT | IPC_EXCL
    while True:
        qid = int(_msgget(key, flags))
        if qid >= 0:
            return qid
        err = _fail("msgget")
        if err.errno != errno.EINTR:
            raise err


def msgsnd(qid: int, mtype: int, body: bytes, *, block: bool = True) -> None:
    """Send one message; with ``block=False`` a full queue raises BlockingIOError."""
    if mtype <= 0:
        raise ValueError(f"mtype must be positive, got {mtype}")
    if len(body) > MAX_BODY:
        raise ValueError(f"message body of {len(body)} bytes exceeds {MAX_BODY}")
    buf = ctypes.create_string_buffer(_LONG.pack(mtype) + body)
    flags = 0 if block else IPC_NOWAIT
    while _msgsnd(qid, buf, len(body), flags) != 0:
        err = _fail("msgsnd")
        if err.errno != errno.EINTR:
            raise err


def msgrcv(
    qid: int, mtype: int = 0, *, block: bool = True, max_body: int = MAX_BODY
) -> tuple[int, bytes] | None:
    """Receive one message as (mtype, body); with ``block=False`` return None when empty.

    ``max_body`` bounds the buffer (a longer body is cut, MSG_NOERROR): a
    caller that polls for tiny messages once per connection, like the
    reference master's idle tokens, need not allocate 2 KiB each time.
    An empty queue is checked before any OSError is built, since for such a
    poller it is the common answer.
    """
    if not 0 <= max_body <= MAX_BODY:
        raise ValueError(f"max_body must be in 0..{MAX_BODY}, got {max_body}")
    buf = ctypes.create_string_buffer(_LONG.size + max_body)
    flags = (0 if block else IPC_NOWAIT) | MSG_NOERROR
    while True:
        n = int(_msgrcv(qid, buf, max_body, mtype, flags))
        if n >= 0:
            raw = buf.raw
            return _LONG.unpack_from(raw)[0], raw[_LONG.size : _LONG.size + n]
        code = ctypes.get_errno()
        if code == errno.ENOMSG or (code == errno.EAGAIN and not block):
            return None
        if code != errno.EINTR:
            raise OSError(code, f"msgrcv failed: {os.strerror(code)}")


def msgrm(qid: int) -> None:
    """Remove a queue (IPC_RMID); raise OSError with the real errno."""
    if _msgctl(qid, IPC_RMID, None) != 0:
        raise _fail("msgctl(IPC_RMID)")


class MessageQueue:
    """A private SysV queue owned by the process that created it.

    Ownership matters because a queue outlives every process: only the creator
    removes it, so a forked child that inherits this object and exits (or calls
    ``remove``) never destroys the parent's queue.
    """

    def __init__(self, key: int = IPC_PRIVATE, mode: int = 0o600) -> None:
        self.id = msgget(key, mode)
        self.owner_pid = os.getpid()
        self.removed = False

    def send(self, mtype: int, body: bytes, *, block: bool = True) -> None:
        msgsnd(self.id, mtype, body, block=block)

    def receive(
        self, mtype: int = 0, *, block: bool = True, max_body: int = MAX_BODY
    ) -> tuple[int, bytes] | None:
        return msgrcv(self.id, mtype, block=block, max_body=max_body)

    def remove(self) -> None:
        """Remove the queue if this process created it; idempotent.

        A queue already removed from outside (EINVAL/EIDRM) counts as removed.
        """
        if self.removed or os.getpid() != self.owner_pid:
            return
        self.removed = True
        try:
            msgrm(self.id)
        except OSError as exc:
            if exc.errno not in (errno.EINVAL, errno.EIDRM):
                raise

    def __enter__(self) -> MessageQueue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def __repr__(self) -> str:
        return f"MessageQueue(id={self.id}, owner_pid={self.owner_pid})"
