"""Pass fds over an AF_UNIX socket with SCM_RIGHTS, without losing or leaking one.

Tests use these helpers to play the master or a worker against the proxy under
test, so they must be stricter than ``socket.send_fds``/``recv_fds``: no
SIGPIPE on a dead peer, fds that arrive close-on-exec, and a full fd table
(MSG_CTRUNC) reported as an error instead of a silently missing fd.
"""

from __future__ import annotations

import array
import errno
import os
import socket
import sys
from collections.abc import Sequence

_FD_SIZE = array.array("i").itemsize
_CMSG_CLOEXEC: int = getattr(socket, "MSG_CMSG_CLOEXEC", 0)
_NOSIGNAL: int = getattr(socket, "MSG_NOSIGNAL", 0)


def send_fds(sock: socket.socket, fds: Sequence[int], data: bytes = b"\0") -> None:
    """Send ``data`` with ``fds`` attached; every failure raises, none kills with SIGPIPE.

    ``data`` must not be empty: a zero-length message could not be told apart
    from EOF by the receiver, and on a stream socket would carry no fd at all.
    """
    if not data:
        raise ValueError("send_fds: data must not be empty (the fds travel with its first byte)")
    ancillary = []
    if fds:
        payload = array.array("i", fds).tobytes()
        ancillary.append((socket.SOL_SOCKET, socket.SCM_RIGHTS, payload))
    sent = sock.sendmsg([data], ancillary, _NOSIGNAL)
    if sent < len(data):  # stream sockets only; the fds went with the first byte
        sock.sendall(data[sent:], _NOSIGNAL)


def recv_fds(sock: socket.socket, maxfds: int, bufsize: int = 1) -> tuple[bytes, list[int]]:
    """Receive up to ``bufsize`` bytes and at most ``maxfds`` fds, all close-on-exec.

    Raises EOFError when the peer has closed its end, and OSError(EMFILE) when
    the kernel set MSG_CTRUNC (a full fd table, or more fds than ``maxfds``):
    the fds that did arrive are closed first, so the caller never leaks one.
    """
    if maxfds < 1:
        raise ValueError(f"recv_fds: maxfds must be at least 1, got {maxfds}")
    data, ancdata, flags, _ = sock.recvmsg(bufsize, _ancillary_size(maxfds), _CMSG_CLOEXEC)
    fds = _collect_fds(ancdata)
    if not _CMSG_CLOEXEC:
        for fd in fds:
            os.set_inheritable(fd, False)
    if flags & socket.MSG_CTRUNC or len(fds) > maxfds:
        for fd in fds:
            os.close(fd)
        raise OSError(
            errno.EMFILE,
            "recv_fds: the kernel truncated the passed fds (MSG_CTRUNC) and dropped them: "
            f"the fd table is full or more than maxfds={maxfds} were sent; "
            "free fds (or raise RLIMIT_NOFILE / maxfds) and receive again",
        )
    if not data and not fds:
        raise EOFError("recv_fds: the peer closed the socket")
    return data, fds


def _ancillary_size(maxfds: int) -> int:
    """Room for exactly ``maxfds`` fds where the kernel honours that (Linux).

    CMSG_SPACE's padding would let a second fd in for maxfds=1 on 64-bit Linux;
    CMSG_LEN makes the kernel set MSG_CTRUNC instead. Other systems get the
    portable CMSG_SPACE, and ``recv_fds`` treats a surplus fd as truncation.
    """
    if sys.platform.startswith("linux"):
        return socket.CMSG_LEN(maxfds * _FD_SIZE)
    return socket.CMSG_SPACE(maxfds * _FD_SIZE)


def _collect_fds(ancdata: list[tuple[int, int, bytes]]) -> list[int]:
    fds = array.array("i")
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - len(payload) % _FD_SIZE])
    return list(fds)
