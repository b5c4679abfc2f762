"""reference/channel.py pinned at commit 78248fa (see ``_master``).

The AF_UNIX channel between the master and one worker, and fd transfer over it.

Chosen once at import: SOCK_SEQPACKET where the platform has it for AF_UNIX
(Linux), else SOCK_STREAM (macOS). Every message is one tag byte carrying one
fd, so on a stream the fd still arrives with exactly the byte it was sent with
and no further framing is needed.
"""

from __future__ import annotations

import array
import errno
import os
import socket


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

#: Tag bytes: whether the master consumed the worker's idle token for this fd.
TAG_TOKEN = b"T"
TAG_ROUND_ROBIN = b"R"

#: Dead peers, as the kernel reports them on send: re-route, don't fail.
PEER_GONE = frozenset({errno.EPIPE, errno.ECONNREFUSED, errno.ECONNRESET})


def channel_pair() -> tuple[socket.socket, socket.socket]:
    """(master end, worker end), both close-on-exec."""
    return socket.socketpair(socket.AF_UNIX, CHANNEL_TYPE)


def send_fd(chan: socket.socket, fd: int, tag: bytes) -> None:
    """Send one fd without blocking and without SIGPIPE; every failure raises."""
    chan.sendmsg(
        [tag],
        [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]).tobytes())],
        _NOSIGNAL | socket.MSG_DONTWAIT,
    )


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
