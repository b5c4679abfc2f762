"""The AF_UNIX channel between the master and one worker, and fd transfer over it.

Chosen once at import: SOCK_SEQPACKET where the platform has it for AF_UNIX
(Linux), else SOCK_STREAM (macOS). Every message is one tag byte carrying one
fd, so on a stream the fd still arrives with exactly the byte it was sent with
and no further framing is needed. The other direction carries only single
wake bytes (see ``WAKE``), so it needs no framing either.

This module is on the per-connection path of both the master and the
workers: everything that can be computed once (flags, structs, tags,
buffers) is, because at a few microseconds per syscall, Python-level
allocations are a visible part of the cost (docs/performance.md).
"""

from __future__ import annotations

import array
import ctypes
import errno
import os
import socket
import struct


def _seqpacket_works() -> bool:
    kind = getattr(socket, "SOCK_SEQPACKET", None)
    if kind is None:
        return False
    try:
        a, b = socket.socketpair(socket.AF_UNIX, kind)
    except OSError:
        return False
    a.close()
    b.close()
    return True


CHANNEL_TYPE = socket.SOCK_SEQPACKET if _seqpacket_works() else socket.SOCK_STREAM
_CMSG_CLOEXEC: int = getattr(socket, "MSG_CMSG_CLOEXEC", 0)
_NOSIGNAL: int = getattr(socket, "MSG_NOSIGNAL", 0)
_ANC_SPACE = socket.CMSG_SPACE(array.array("i").itemsize)
_FD_SIZE = array.array("i").itemsize
_FD = struct.Struct("i")
_SEND_FLAGS = _NOSIGNAL | socket.MSG_DONTWAIT
_RECV_FLAGS = _CMSG_CLOEXEC
_RECV_FLAGS_NOWAIT = _CMSG_CLOEXEC | socket.MSG_DONTWAIT

#: Tag byte of an fd message: 0x40 plus these bits.
#: TCP/IPv4: the worker builds its socket object without asking the kernel (two getsockopt
#: calls per connection, SO_TYPE and SO_PROTOCOL) for what the master knew from its
#: listener. (CPython still calls getsockname once, to check that the fd is a socket.)
TAG_INET = 0x01
#: Wake request: the master sends this worker nothing more until the worker, back in
#: ``accept`` with nothing left to do, writes ``WAKE`` on its channel (backpressure).
TAG_WAKE = 0x02
_TAGS = {(inet, wake): bytes([0x40 | (TAG_INET if inet else 0) | (TAG_WAKE if wake else 0)])
         for inet in (False, True) for wake in (False, True)}  # fmt: skip
#: What a worker writes to its channel when it goes idle after a wake request.
WAKE = b"W"

#: Dead peers, as the kernel reports them on send: re-route, don't fail.
PEER_GONE = frozenset({errno.EPIPE, errno.ECONNREFUSED, errno.ECONNRESET})


def channel_pair() -> tuple[socket.socket, socket.socket]:
    """(master end, worker end), both close-on-exec."""
    return socket.socketpair(socket.AF_UNIX, CHANNEL_TYPE)


def make_tag(inet_tcp: bool, wake: bool) -> bytes:
    return _TAGS[(inet_tcp, wake)]


def wants_wake(tag: bytes) -> bool:
    return bool(tag) and bool(tag[0] & TAG_WAKE)


def send_fd(chan: socket.socket, fd: int, tag: bytes) -> None:
    """Send one fd without blocking and without SIGPIPE; every failure raises."""
    chan.sendmsg([tag], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, _FD.pack(fd))], _SEND_FLAGS)


def recv_message(chan: socket.socket, block: bool = True) -> tuple[bytes, list[int], bool]:
    """One message as (tag, fds, truncated); (b"", [], False) at EOF.

    ``block=False`` raises BlockingIOError when nothing is queued. The fds are
    close-on-exec. ``truncated`` is MSG_CTRUNC: the worker's fd table was full
    and the kernel dropped the fd (the client sees EOF).
    """
    msg, ancdata, flags, _ = chan.recvmsg(
        1, _ANC_SPACE, _RECV_FLAGS if block else _RECV_FLAGS_NOWAIT
    )
    fds = array.array("i")
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - len(data) % _FD_SIZE])
    if not _CMSG_CLOEXEC:
        for fd in fds:
            os.set_inheritable(fd, False)
    return msg, fds.tolist(), bool(flags & socket.MSG_CTRUNC)


def one_fd(msg: bytes, fds: list[int], truncated: bool) -> int:
    """The single fd of a message from ``recv_message``; anything else closes what came and raises.

    EOFError when the master closed the channel; OSError(EMFILE) when the fd
    was dropped because the fd table is full, so the worker can accept again
    later; OSError(EBADMSG) for a message without exactly one fd.
    """
    if not truncated and len(fds) == 1 and msg:
        return fds[0]
    for fd in fds:
        os.close(fd)
    if not msg and not fds:
        raise EOFError("accept: the master closed the channel")
    if truncated:
        raise OSError(
            errno.EMFILE,
            "accept: recvmsg truncated the passed fd (MSG_CTRUNC): the worker's fd table "
            "is full; the connection was dropped",
        )
    raise OSError(errno.EBADMSG, f"accept: expected 1 fd from the master, got {len(fds)}")


def recv_fd(chan: socket.socket) -> tuple[bytes, int]:
    """Block for one (tag, fd); EOFError when the master has closed its end (see ``one_fd``)."""
    msg, fds, truncated = recv_message(chan)
    return msg, one_fd(msg, fds, truncated)


def socket_for(fd: int, tag: bytes) -> socket.socket:
    """The worker's socket object for a received fd (see ``TAG_INET``)."""
    if tag[0] & TAG_INET:
        return socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, fileno=fd)
    return socket.socket(fileno=fd)


def send_wake(chan: socket.socket) -> None:
    """The worker's "idle again" after a wake request; never blocks, never SIGPIPE."""
    chan.send(WAKE, _SEND_FLAGS)


# -- idle tokens on the System V queue: the per-connection fast path ------------

#: A token's body: (worker index, fds that worker had received when it went idle).
TOKEN = struct.Struct("=iq")

_libc = ctypes.CDLL(None, use_errno=True)
_msgsnd = _libc.msgsnd
_msgsnd.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_msgsnd.restype = ctypes.c_int
_msgrcv = _libc.msgrcv
_msgrcv.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_long, ctypes.c_int]
_msgrcv.restype = ctypes.c_ssize_t
_IPC_NOWAIT = 0o4000
_MSG_NOERROR = 0o10000
_MTYPE = struct.Struct("l")
_BODY_MAX = 64


class TokenQueue:
    """Non-blocking send and receive of idle tokens on an existing queue id.

    Why not ``MessageQueue.send``/``receive``: they allocate a 2 KiB buffer per
    call and build an OSError (with ``strerror``) for every empty receive,
    which costs more than the msgrcv syscall itself; a dispatch does one of
    them per connection. Here both buffers are allocated once, and an empty
    queue is a plain ``None``. Errors keep the errno of the failing call.
    """

    def __init__(self, qid: int, mtype: int) -> None:
        self.qid = qid
        self.mtype = mtype
        self._rbuf = ctypes.create_string_buffer(_MTYPE.size + _BODY_MAX)
        self._sbuf = ctypes.create_string_buffer(_MTYPE.size + _BODY_MAX)
        _MTYPE.pack_into(self._sbuf, 0, mtype)

    def post(self, body: bytes) -> None:
        """Send without blocking; a full queue raises BlockingIOError (EAGAIN)."""
        n = len(body)
        ctypes.memmove(ctypes.addressof(self._sbuf) + _MTYPE.size, body, n)
        while _msgsnd(self.qid, self._sbuf, n, _IPC_NOWAIT) != 0:
            code = ctypes.get_errno()
            if code != errno.EINTR:
                raise OSError(code, f"msgsnd failed: {os.strerror(code)}")

    def take(self) -> bytes | None:
        """The oldest token's body, or None when the queue is empty."""
        while True:
            n = _msgrcv(self.qid, self._rbuf, _BODY_MAX, self.mtype, _IPC_NOWAIT | _MSG_NOERROR)
            if n >= 0:
                return ctypes.string_at(ctypes.addressof(self._rbuf) + _MTYPE.size, n)
            code = ctypes.get_errno()
            if code == errno.ENOMSG or code == errno.EAGAIN:
                return None
            if code != errno.EINTR:
                raise OSError(code, f"msgrcv failed: {os.strerror(code)}")
