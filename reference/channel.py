"""The AF_UNIX channel between the master and one worker, and fd transfer over it.

Chosen once at import: SOCK_SEQPACKET where the platform has it for AF_UNIX
(Linux), else SOCK_STREAM (macOS). Every message is one tag byte carrying one
fd, so on a stream the fd still arrives with exactly the byte it was sent with
and no further framing is needed.
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

#: Tag bytes: whether the master consumed the worker's idle token for this fd. The
#: upper-case tags also say that the fd is a TCP/IPv4 connection, so the worker can
#: build its socket object without three syscalls (getsockname, SO_TYPE, SO_PROTOCOL)
#: asking the kernel what the master already knew; lower case: ask the kernel.
TAG_TOKEN = b"T"
TAG_ROUND_ROBIN = b"R"
_LOWER = {TAG_TOKEN: TAG_TOKEN.lower(), TAG_ROUND_ROBIN: TAG_ROUND_ROBIN.lower()}
_FD = struct.Struct("i")
_SEND_FLAGS = _NOSIGNAL | socket.MSG_DONTWAIT

#: Dead peers, as the kernel reports them on send: re-route, don't fail.
PEER_GONE = frozenset({errno.EPIPE, errno.ECONNREFUSED, errno.ECONNRESET})


def channel_pair() -> tuple[socket.socket, socket.socket]:
    """(master end, worker end), both close-on-exec."""
    return socket.socketpair(socket.AF_UNIX, CHANNEL_TYPE)


def tag_for(tag: bytes, inet_tcp: bool) -> bytes:
    """The tag to send: ``tag`` as is for a TCP/IPv4 connection, else its lower case."""
    return tag if inet_tcp else _LOWER[tag]


def is_token_tag(tag: bytes) -> bool:
    return tag in (TAG_TOKEN, _LOWER[TAG_TOKEN])


def send_fd(chan: socket.socket, fd: int, tag: bytes) -> None:
    """Send one fd without blocking and without SIGPIPE; every failure raises."""
    chan.sendmsg([tag], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, _FD.pack(fd))], _SEND_FLAGS)


def socket_for(fd: int, tag: bytes) -> socket.socket:
    """The worker's socket object for a received fd (see the tags above)."""
    if tag.isupper():
        return socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, fileno=fd)
    return socket.socket(fileno=fd)


def recv_fd(chan: socket.socket) -> tuple[bytes, int]:
    """Block for one (tag, fd); EOFError when the master has closed its end.

    If the fd table is full the kernel drops the fd and sets MSG_CTRUNC: close
    whatever did arrive and raise EMFILE, so the worker can accept again later.
    """
    msg, ancdata, flags, _ = chan.recvmsg(1, _ANC_SPACE, _CMSG_CLOEXEC)
    fds = array.array("i")
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - len(data) % _FD_SIZE])
    if not _CMSG_CLOEXEC:
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
                "accept: recvmsg truncated the passed fd (MSG_CTRUNC): the worker's fd table "
                "is full; the connection was dropped",
            )
        raise OSError(errno.EBADMSG, f"accept: expected 1 fd from the master, got {len(fds)}")
    return msg, fds[0]


# -- idle tokens on the System V queue: the per-connection fast path ------------

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
                return self._rbuf.raw[_MTYPE.size : _MTYPE.size + n]
            code = ctypes.get_errno()
            if code == errno.ENOMSG or code == errno.EAGAIN:
                return None
            if code != errno.EINTR:
                raise OSError(code, f"msgrcv failed: {os.strerror(code)}")
