"""The AF_UNIX channel between the master and one worker, and fd transfer over it.

Chosen once at import: SOCK_SEQPACKET where the platform has it for AF_UNIX
(Linux), else SOCK_STREAM (macOS). Every message is one tag byte carrying one
fd, so on a stream the fd still arrives with exactly the byte it was sent with
and no further framing is needed. The other direction carries only single
wake bytes (see ``WAKE``), so it needs no framing either.
"""

from __future__ import annotations

import array
import errno
import math
import os
import select
import socket
import struct
import time


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
_FD = struct.Struct("i")
_ANC_SPACE = socket.CMSG_SPACE(_FD.size)

#: The tag byte of an fd message.
TAG = b"F"
#: The tag of an fd after which the master sends this worker nothing until the worker,
#: back in ``accept`` with nothing left to do, writes ``WAKE`` (backpressure only).
TAG_WAKE = b"W"
#: What a worker writes to its channel when it goes idle after a wake request.
WAKE = b"W"

#: Dead peers, as the kernel reports them on send: re-route, don't fail.
PEER_GONE = frozenset({errno.EPIPE, errno.ECONNREFUSED, errno.ECONNRESET})
#: A message arrived but its fd did not reach the worker (see ``one_fd``).
FD_DROPPED = frozenset({errno.EMFILE, errno.EBADMSG})

_POLL_MAX_MS = 2**31 - 1


def channel_pair() -> tuple[socket.socket, socket.socket]:
    """(master end, worker end), both close-on-exec."""
    return socket.socketpair(socket.AF_UNIX, CHANNEL_TYPE)


def send_fd(chan: socket.socket, fd: int, tag: bytes) -> None:
    """Send one fd without blocking and without SIGPIPE; every failure raises."""
    flags = _NOSIGNAL | socket.MSG_DONTWAIT
    chan.sendmsg([tag], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, _FD.pack(fd))], flags)


def recv_fd(chan: socket.socket) -> tuple[bytes, int]:
    """Block for one (tag, fd), close-on-exec; see ``one_fd`` for what else can come."""
    msg, ancdata, flags, _ = chan.recvmsg(1, _ANC_SPACE, _CMSG_CLOEXEC)
    fds = array.array("i")
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
    if not _CMSG_CLOEXEC:
        for fd in fds:
            os.set_inheritable(fd, False)
    return msg, one_fd(msg, fds.tolist(), bool(flags & socket.MSG_CTRUNC))


def one_fd(msg: bytes, fds: list[int], truncated: bool) -> int:
    """The single fd of a message; anything else closes what came and raises.

    EOFError when the master closed the channel; OSError(EMFILE) when the fd
    was dropped (MSG_CTRUNC) because the fd table is full, so the worker can
    accept again later; OSError(EBADMSG) for a message without exactly one fd.
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


def has_message(chan: socket.socket) -> bool:
    """Whether a receive would not block: a message is queued, the master closed, or
    ``chan`` itself is closed (then the receive raises EBADF, an OSError like any other)."""
    fd = chan.fileno()
    return fd < 0 or bool(poll_until({fd: select.POLLIN}, time.monotonic()))


def send_wake(chan: socket.socket) -> None:
    """The worker's "idle again" after a wake request; never blocks, never SIGPIPE."""
    chan.send(WAKE, _NOSIGNAL | socket.MSG_DONTWAIT)


def watch(chans: list[socket.socket | None], events: int) -> dict[int, int]:
    """``poll_until``'s argument for these channels (the closed ones left out)."""
    return {chan.fileno(): events for chan in chans if chan is not None}


def poll_until(watch: dict[int, int], deadline: float | None) -> list[tuple[int, int]]:
    """Wait until one of ``watch`` (fd -> poll events) is ready; [] at ``deadline``.

    ``poll``, not ``select``: select fails for fd numbers above FD_SETSIZE.
    poll() takes whole milliseconds: the wait is rounded up (never cut short)
    and capped (a huge timeout waits in several polls instead of overflowing).
    """
    poller = select.poll()
    for fd, mask in watch.items():
        poller.register(fd, mask)
    while True:
        ms = None
        if deadline is not None:
            ms = min(max(0, math.ceil((deadline - time.monotonic()) * 1000)), _POLL_MAX_MS)
        events = poller.poll(ms)
        if events or (deadline is not None and time.monotonic() >= deadline):
            return events
