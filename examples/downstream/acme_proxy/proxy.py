"""AcmeMasterProxy: the master accepts; an idle worker gets the connection by SCM_RIGHTS.

Written against the fd-passing proxy contract alone (no toolkit import). Each
worker owns one AF_UNIX channel; before it blocks in ``accept`` it posts an
idle token (its index) on a private System V queue, and ``dispatch`` prefers
the worker whose token it takes, falling back to round-robin.
"""

from __future__ import annotations

import array
import errno
import os
import select
import socket
import sys
import time

from . import _sysv

PROTOCOLS = ("tcp", "http", "websocket")
_PEER_GONE = (errno.EPIPE, errno.ECONNRESET, errno.ECONNREFUSED)
_QUEUE_GONE = (errno.EIDRM, errno.EINVAL)
_NOSIGNAL = getattr(socket, "MSG_NOSIGNAL", 0)
_CLOEXEC = getattr(socket, "MSG_CMSG_CLOEXEC", 0)
_SO_NOSIGPIPE = 0x1022  # macOS: no MSG_NOSIGNAL, a socket option instead
ANCILLARY_SPACE = socket.CMSG_SPACE(4)
_TOKEN, _ROUND_ROBIN = b"T", b"R"


def _channel_type() -> int:
    try:
        socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)[0].close()
    except (AttributeError, OSError):
        return socket.SOCK_STREAM  # one byte per fd keeps a stream in step
    return socket.SOCK_SEQPACKET


def _wait(socks: list[socket.socket], events: int, timeout: float | None) -> bool:
    """poll(), not select(): fd numbers above FD_SETSIZE are fine."""
    poller = select.poll()
    for sock in socks:
        poller.register(sock, events)
    return bool(poller.poll(None if timeout is None else max(timeout, 0.0) * 1000))


class AcmeMasterProxy:
    channel_type = _channel_type()

    def __init__(self) -> None:
        self._owner = os.getpid()
        self._listeners: list[socket.socket] = []
        self._masters: list[socket.socket] = []
        self._ends: list[socket.socket] = []  # worker ends, until the first dispatch
        self._queue: int | None = None
        self._dead: set[int] = set()
        self._next = 0
        self._index: int | None = None  # set in a worker
        self._chan: socket.socket | None = None
        self._token_out = False

    def is_supported(self) -> bool:
        return hasattr(socket, "SCM_RIGHTS") and hasattr(socket, "AF_UNIX")

    def create_socket(self, port: int, protocol: str = "tcp") -> socket.socket:
        if isinstance(port, bool) or not isinstance(port, int):
            raise TypeError(f"port must be an int, not {type(port).__name__}")
        if not 0 <= port <= 65535:
            raise ValueError(f"port {port} is outside 0..65535")
        if protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {protocol!r}")
        try:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        except OSError as exc:
            raise OSError(exc.errno, f"create_socket: socket() failed: {exc.strerror}") from exc
        step = "setsockopt"
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            step = "bind"
            sock.bind(("127.0.0.1", port))
            step = "listen"
            sock.listen(socket.SOMAXCONN)
        except OSError as exc:
            sock.close()
            raise OSError(exc.errno, f"create_socket: {step}() failed: {exc.strerror}") from exc
        self._listeners.append(sock)
        return sock

    def open_channels(self, workers: int) -> None:
        if isinstance(workers, bool) or not isinstance(workers, int):
            raise TypeError(f"workers must be an int, not {type(workers).__name__}")
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        if self._index is not None or not self._listeners or self._masters:
            raise OSError(errno.EINVAL, "open_channels: call it once, after create_socket()")
        made: list[socket.socket] = []
        step = "socketpair()"
        try:
            for _ in range(workers):
                made += socket.socketpair(socket.AF_UNIX, self.channel_type)
            step = "msgget()"
            self._queue = _sysv.create_queue()
        except OSError as exc:
            for sock in made:
                sock.close()
            raise OSError(exc.errno, f"open_channels: {step} failed: {exc.strerror}") from exc
        if sys.platform == "darwin":
            for sock in made[0::2]:
                sock.setsockopt(socket.SOL_SOCKET, _SO_NOSIGPIPE, 1)
        self._masters, self._ends = made[0::2], made[1::2]

    def enter_worker(self, index: int) -> None:
        if not 0 <= index < len(self._ends):
            raise ValueError(f"enter_worker: no channel {index} (open_channels first)")
        self._chan = self._ends.pop(index)
        for sock in (*self._ends, *self._masters, *self._listeners):
            sock.close()
        self._ends, self._masters, self._listeners = [], [], []
        self._index = index

    def dispatch(self, listener: socket.socket, timeout: float | None = None) -> int:
        if self._index is not None or not self._masters:
            raise OSError(errno.EINVAL, "dispatch: call create_socket() and open_channels() first")
        for end in self._ends:  # every worker is forked: a dead one's channel must say EPIPE
            end.close()
        self._ends = []
        if listener.fileno() < 0:
            raise OSError(errno.EBADF, "dispatch: the listener is closed")
        deadline = None if timeout is None else time.monotonic() + timeout
        if timeout is not None and not _wait([listener], select.POLLIN, timeout):
            raise TimeoutError(errno.ETIMEDOUT, f"dispatch: no connection within {timeout}s")
        conn = self._accept(listener)
        try:
            return self._hand_over(conn.fileno(), deadline)
        finally:
            conn.close()  # the worker has its own copy now, or nobody gets one

    def _accept(self, listener: socket.socket) -> socket.socket:
        try:
            return listener.accept()[0]
        except OSError as exc:
            raise OSError(exc.errno, f"dispatch: accept() failed: {exc.strerror}") from exc

    def _hand_over(self, fd: int, deadline: float | None) -> int:
        while True:
            full: list[socket.socket] = []
            for index, tag in self._candidates():
                try:
                    self._send(self._masters[index], fd, tag)
                    return index
                except BlockingIOError:
                    full.append(self._masters[index])
                except OSError as exc:
                    if exc.errno not in _PEER_GONE:
                        raise OSError(exc.errno, f"dispatch: sendmsg() failed: {exc}") from exc
                    self._dead.add(index)
                if tag == _TOKEN:
                    self._post(index)  # it did not get this one: keep its place
            if not full:
                raise BrokenPipeError(errno.EPIPE, "dispatch: no live worker; connection closed")
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and (left <= 0 or not _wait(full, select.POLLOUT, left)):
                raise TimeoutError(errno.ETIMEDOUT, "dispatch: every worker's channel is full")

    def _candidates(self) -> list[tuple[int, bytes]]:
        """The worker whose idle token comes first, then every live worker round-robin."""
        order: list[tuple[int, bytes]] = []
        while not order and self._queue is not None and (index := self._take()) is not None:
            if 0 <= index < len(self._masters) and index not in self._dead:
                order.append((index, _TOKEN))  # else a dead worker's stale token: dropped
        n, self._next = len(self._masters), self._next + 1
        rest = ((self._next + k) % n for k in range(n))
        return order + [
            (i, _ROUND_ROBIN) for i in rest if i not in self._dead and (i, _TOKEN) not in order
        ]

    def _send(self, chan: socket.socket, fd: int, tag: bytes) -> None:
        fds = array.array("i", [fd]).tobytes()
        chan.sendmsg(
            [tag], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)], _NOSIGNAL | socket.MSG_DONTWAIT
        )

    def accept(self, listener: socket.socket) -> socket.socket:
        if self._chan is None or self._index is None:
            raise OSError(errno.EINVAL, "accept: call enter_worker() first")
        if not self._token_out:
            self._token_out = self._post(self._index)
        tag, fds, flags = self._receive(self._chan)
        if tag == _TOKEN:
            self._token_out = False
        if flags & socket.MSG_CTRUNC or len(fds) != 1 or not tag:
            for fd in fds:
                os.close(fd)
            if not tag and not fds:
                raise EOFError("accept: the master closed the channel")
            code = errno.EMFILE if flags & socket.MSG_CTRUNC else errno.EBADMSG  # table full
            raise OSError(code, f"accept: dropped a connection ({len(fds)} fds, {flags=:#x})")
        return socket.socket(fileno=fds[0])

    def _receive(self, chan: socket.socket) -> tuple[bytes, list[int], int]:
        msg, ancillary, flags, _ = chan.recvmsg(1, ANCILLARY_SPACE, _CLOEXEC)
        fds = array.array("i")
        for level, kind, data in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
        for fd in fds:
            os.set_inheritable(fd, False)
        return msg, list(fds), flags

    def _take(self) -> int | None:
        assert self._queue is not None
        try:
            return _sysv.take(self._queue)
        except OSError as exc:
            if exc.errno not in _QUEUE_GONE:
                raise
            self._queue = None  # removed from outside: round-robin from now on
            return None

    def _post(self, index: int) -> bool:
        if self._queue is None:
            return False
        try:
            _sysv.post(self._queue, index)
        except OSError as exc:
            if exc.errno in _QUEUE_GONE:
                self._queue = None
            return False  # a full queue only costs the preference
        return True

    def close(self) -> None:
        for sock in (*self._listeners, *self._masters, *self._ends):
            sock.close()
        self._listeners, self._masters, self._ends = [], [], []
        if self._chan is not None:
            self._chan.close()
            self._chan = None
        queue, self._queue = self._queue, None
        if queue is not None and self._index is None and os.getpid() == self._owner:
            try:
                _sysv.remove_queue(queue)
            except OSError as exc:
                if exc.errno not in _QUEUE_GONE:
                    raise
