"""MasterProxy: the master accepts, a worker serves, the fd crosses with SCM_RIGHTS.

Each defect the seed's review found has a counterpart here: the queue is kept
and removed (and only by its creator), every worker end stays open until the
workers exist and then leaves the master, every send is checked, every error
keeps the errno of the call that failed and names that call.
"""

from __future__ import annotations

import errno
import math
import os
import select
import socket
import time

from fdpass_conformance.contract import ProtocolType
from fdpass_conformance.sysv import MessageQueue

from . import channel
from .listener import open_listener, validate_port, validate_protocol

#: The idle-token message type: one FIFO of worker indices.
TOKEN_MTYPE = 1
#: The queue vanished under us (removed from outside): serve without tokens.
_QUEUE_GONE = frozenset({errno.EIDRM, errno.EINVAL})
_POLL_MAX_MS = 2**31 - 1


def _poll_ms(seconds: float) -> int:
    """poll() takes whole milliseconds (an int): round up, so that a timeout is never cut
    short, and cap, so that a huge timeout waits in several polls instead of overflowing."""
    return min(max(0, math.ceil(seconds * 1000)), _POLL_MAX_MS)


class NoLiveWorkerError(BrokenPipeError):
    """Every worker's channel refused the connection; it was closed."""


class MasterProxy:
    """A master that passes each accepted connection to an idle worker.

    The SysV queue carries idle tokens: a worker posts its index before it
    blocks in ``accept``; ``dispatch`` takes a token to choose an idle worker
    (Swoole's preemptive mode) and falls back to round-robin when none is idle.
    """

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.protocol: ProtocolType | None = None
        self._owner_pid = os.getpid()
        self._listeners: list[socket.socket] = []
        self._queue: MessageQueue | None = None
        self._queue_alive = False
        self._master_ends: list[socket.socket | None] = []
        self._worker_ends: list[socket.socket | None] = []
        self._sealed = False
        self._dead: set[int] = set()
        self._next = 0
        self._poller: select.poll | None = None
        self._poller_fd = -1
        self._token_queue: channel.TokenQueue | None = None
        self._inet_listener: socket.socket | None = None
        self._inet = False
        # Worker side.
        self._index: int | None = None
        self._chan: socket.socket | None = None
        self._token_out = False

    # -- every process -------------------------------------------------

    def is_supported(self) -> bool:
        return hasattr(socket, "SCM_RIGHTS") and hasattr(socket, "AF_UNIX")

    def create_socket(
        self, port: int, protocol: ProtocolType | str = ProtocolType.TCP
    ) -> socket.socket:
        port = validate_port(port)
        self.protocol = validate_protocol(protocol)
        self._require_master("create_socket")
        listener = open_listener(self.host, port)
        if self._queue is None:
            try:
                self._queue = MessageQueue(mode=0o600)
            except OSError as exc:
                listener.close()
                raise OSError(exc.errno, f"create_socket: {exc.strerror}") from exc
            self._queue_alive = True
        self._listeners.append(listener)
        return listener

    def close(self) -> None:
        """Release what this process holds; only the creator removes the queue."""
        for sock in (*self._listeners, *self._master_ends, *self._worker_ends, self._chan):
            if sock is not None:
                sock.close()
        self._listeners = []
        self._master_ends = []
        self._worker_ends = []
        self._chan = None
        if self._queue is not None:
            self._queue.remove()  # a no-op outside the creating process
            self._queue = None
        self._queue_alive = False

    # -- master ----------------------------------------------------------

    def open_channels(self, workers: int) -> None:
        if isinstance(workers, bool) or not isinstance(workers, int):
            raise TypeError(f"workers must be an int, got {type(workers).__name__}")
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self._require_master("open_channels")
        if self._queue is None:
            raise OSError(errno.EINVAL, "open_channels: call create_socket() first")
        if self._master_ends:
            raise OSError(errno.EINVAL, "open_channels: channels are already open")
        masters: list[socket.socket | None] = []
        ends: list[socket.socket | None] = []
        try:
            for i in range(workers):
                try:
                    m, w = channel.channel_pair()
                except OSError as exc:
                    raise OSError(
                        exc.errno,
                        f"open_channels: socketpair for worker {i} failed: {exc.strerror}",
                    ) from exc
                masters.append(m)
                ends.append(w)
        except OSError:
            for sock in (*masters, *ends):
                if sock is not None:
                    sock.close()
            self._queue.remove()
            self._queue = None
            self._queue_alive = False
            raise
        self._master_ends, self._worker_ends = masters, ends

    def dispatch(self, listener: socket.socket, timeout: float | None = None) -> int:
        if not self._master_ends:
            raise OSError(errno.EINVAL, "dispatch: call create_socket() and open_channels() first")
        if not self._sealed:
            self._seal()
        deadline = None if timeout is None else time.monotonic() + timeout
        fd = self._accept_fd(listener, timeout)
        try:
            return self._hand_over(fd, deadline, self._is_inet_tcp(listener))
        finally:
            os.close(fd)  # the worker has its own copy now, or nobody gets one

    def _seal(self) -> None:
        """Drop the master's copies of the worker ends: from now on a dead worker's
        channel reports EPIPE instead of silently swallowing fds (seed round 3, #3)."""
        for i, end in enumerate(self._worker_ends):
            if end is not None:
                end.close()
                self._worker_ends[i] = None
        self._sealed = True

    def _accept_fd(self, listener: socket.socket, timeout: float | None) -> int:
        """Accept one connection as a raw fd: no socket object is built only to be detached.

        With a timeout, ``poll`` waits for the listener (``select`` costs more
        per call and fails for fd numbers above FD_SETSIZE); without one, the
        blocking ``accept`` itself waits, which saves the poll syscall.
        """
        fd = listener.fileno()
        if fd < 0:
            raise OSError(errno.EBADF, "dispatch: the listener is closed")
        if timeout is not None and not self._wait_listener(fd, timeout):
            raise TimeoutError(errno.ETIMEDOUT, f"dispatch: no connection within {timeout}s")
        try:
            conn_fd, _ = listener._accept()  # type: ignore[attr-defined]
        except OSError as exc:
            raise OSError(exc.errno, f"dispatch: accept() failed: {exc.strerror}") from exc
        return int(conn_fd)

    def _wait_listener(self, fd: int, timeout: float) -> bool:
        """Wait until listener ``fd`` is readable; False once ``timeout`` seconds have passed.

        The poll object is kept and re-registered only when the listener's fd
        number changes: registering costs as much as the wait itself.
        """
        if self._poller is None or self._poller_fd != fd:
            self._poller = select.poll()
            self._poller.register(fd, select.POLLIN)
            self._poller_fd = fd
        deadline = time.monotonic() + max(timeout, 0.0)
        while True:
            try:
                if self._poller.poll(_poll_ms(deadline - time.monotonic())):
                    return True
            except OSError as exc:
                raise OSError(exc.errno, f"dispatch: poll() on listener failed: {exc}") from exc
            if time.monotonic() >= deadline:
                return False

    def _is_inet_tcp(self, listener: socket.socket) -> bool:
        """Whether the listener accepts TCP/IPv4 (cached: ``family`` is a slow property)."""
        if self._inet_listener is not listener:
            self._inet_listener = listener
            self._inet = listener.family == socket.AF_INET and listener.type == socket.SOCK_STREAM
        return self._inet

    def _hand_over(self, fd: int, deadline: float | None, inet_tcp: bool) -> int:
        busy: set[int] = set()  # channels that were full this round
        while True:
            index, via_token = self._pick(busy)
            if index is None:
                if busy and self._wait_writable(busy, deadline):
                    busy.clear()
                    continue
                live = len(self._master_ends) - len(self._dead)
                if busy:
                    raise TimeoutError(
                        errno.ETIMEDOUT,
                        f"dispatch: every live worker's channel stayed full ({live} live); "
                        "connection closed",
                    )
                raise NoLiveWorkerError(
                    errno.EPIPE,
                    f"dispatch: no live worker (all {len(self._master_ends)} channels are "
                    "closed); connection closed",
                )
            chan = self._master_ends[index]
            assert chan is not None
            try:
                tag = channel.TAG_TOKEN if via_token else channel.TAG_ROUND_ROBIN
                channel.send_fd(chan, fd, channel.tag_for(tag, inet_tcp))
                return index
            except BlockingIOError:
                busy.add(index)
                if via_token:
                    self._post_token(index)  # give the worker its place back
            except OSError as exc:
                if exc.errno in channel.PEER_GONE:
                    self._dead.add(index)
                    continue
                raise OSError(
                    exc.errno, f"dispatch: sendmsg to worker {index} failed: {exc.strerror}"
                ) from exc

    def _pick(self, busy: set[int]) -> tuple[int | None, bool]:
        """An idle worker from the token queue, else the next live one round-robin."""
        deferred: list[int] = []  # tokens of workers whose channel is full right now
        try:
            return self._pick_token(busy, deferred) or self._pick_round_robin(busy)
        finally:
            for index in deferred:
                self._post_token(index)

    def _pick_token(self, busy: set[int], deferred: list[int]) -> tuple[int, bool] | None:
        while self._queue_alive and self._queue is not None:
            try:
                body = self._tokens().take()
            except OSError as exc:
                if exc.errno not in _QUEUE_GONE:
                    raise OSError(exc.errno, f"dispatch: msgrcv failed: {exc.strerror}") from exc
                self._queue_alive = False
                break
            if body is None:
                break
            index = int(body)
            if index in busy:
                deferred.append(index)
            elif 0 <= index < len(self._master_ends) and index not in self._dead:
                return index, True
            # else a stale token of a dead worker: dropped
        return None

    def _tokens(self) -> channel.TokenQueue:
        """The fast token path on this proxy's queue (made once per queue, per process)."""
        assert self._queue is not None
        if self._token_queue is None or self._token_queue.qid != self._queue.id:
            self._token_queue = channel.TokenQueue(self._queue.id, TOKEN_MTYPE)
        return self._token_queue

    def _pick_round_robin(self, busy: set[int]) -> tuple[int | None, bool]:
        n = len(self._master_ends)
        for k in range(n):
            index = (self._next + k) % n
            if index not in self._dead and index not in busy:
                self._next = index + 1
                return index, False
        return None, False

    def _post_token(self, index: int) -> bool:
        """Post an idle token; a full or vanished queue only costs the preference."""
        if self._queue is None or not self._queue_alive:
            return False
        try:
            self._tokens().post(str(index).encode())
        except OSError as exc:
            if exc.errno in _QUEUE_GONE:
                self._queue_alive = False
            elif exc.errno != errno.EAGAIN:
                raise OSError(exc.errno, f"msgsnd of idle token failed: {exc.strerror}") from exc
            return False
        return True

    def _wait_writable(self, busy: set[int], deadline: float | None) -> bool:
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            return False
        chans = [c for c in (self._master_ends[i] for i in busy) if c is not None]
        _, writable, _ = select.select([], chans, [], remaining)
        return bool(writable)

    def _require_master(self, step: str) -> None:
        if self._index is not None:
            raise OSError(errno.EINVAL, f"{step}: not allowed in worker {self._index}")

    # -- worker ----------------------------------------------------------

    def enter_worker(self, index: int) -> None:
        """Keep worker ``index``'s end and drop everything else this process inherited."""
        n = len(self._worker_ends)
        if not 0 <= index < n:
            raise ValueError(f"enter_worker: index {index} outside 0..{n - 1}")
        chan = self._worker_ends[index]
        if chan is None:
            raise OSError(errno.EINVAL, "enter_worker: channels were already sealed by dispatch")
        for i, end in enumerate(self._worker_ends):
            if i != index and end is not None:
                end.close()
        for sock in (*self._master_ends, *self._listeners):
            if sock is not None:
                sock.close()
        self._worker_ends, self._master_ends, self._listeners = [], [], []
        self._chan, self._index = chan, index

    def accept(self, listener: socket.socket) -> socket.socket:
        if self._chan is None:
            raise OSError(errno.EINVAL, "accept: call enter_worker() first (MasterProxy)")
        if not self._token_out and self._index is not None:
            self._token_out = self._post_token(self._index)
        tag, fd = channel.recv_fd(self._chan)
        if channel.is_token_tag(tag):
            self._token_out = False
        return channel.socket_for(fd, tag)
