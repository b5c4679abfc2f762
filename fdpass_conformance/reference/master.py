"""MasterProxy: the master accepts, a worker serves, the fd crosses with SCM_RIGHTS.

Each defect the seed's review found has a counterpart here: the queue is kept
and removed (and only by its creator), every worker end stays open until the
workers exist and then leaves the master, every send is checked, every error
keeps the errno of the call that failed and names that call.

``dispatch`` runs once per connection, so its path is kept short: a raw fd
from ``accept`` (no socket object), a kept poll object, preallocated token
buffers, and no syscall whose answer the master already knows. Each of these
was measured; see docs/performance.md.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import math
import os
import select
import socket
import time
from collections.abc import Callable

from fdpass_conformance.contract import ProtocolType
from fdpass_conformance.sysv import MessageQueue

from . import channel
from .listener import open_listener, validate_port, validate_protocol

#: The idle-token message type: one FIFO of (worker index, fds received) bodies.
TOKEN_MTYPE = 1
#: The queue vanished under us (removed from outside): serve without tokens.
_QUEUE_GONE = frozenset({errno.EIDRM, errno.EINVAL})
_POLL_MAX_MS = 2**31 - 1
_POLL_IN = select.POLLIN | select.POLLHUP | select.POLLERR
#: Bytes read (and dropped) from a rejected connection before it is closed, so that
#: the close sends FIN after the reply instead of RST (unread data triggers RST).
_DRAIN_LIMIT = 1 << 20

#: ``on_overflow(conn)``: write a reply to a rejected connection (the master closes it).
OverflowHandler = Callable[[socket.socket], object]


def _poll_ms(seconds: float) -> int:
    """poll() takes whole milliseconds (an int): round up, so that a timeout is never cut
    short, and cap, so that a huge timeout waits in several polls instead of overflowing."""
    return min(max(0, math.ceil(seconds * 1000)), _POLL_MAX_MS)


class NoLiveWorkerError(BrokenPipeError):
    """Every worker's channel refused the connection; it was closed."""


class MasterProxy:
    """A master that passes each accepted connection to an idle worker.

    The SysV queue carries idle tokens: a worker that is back in ``accept``
    with nothing queued in its channel posts (its index, the number of fds
    it has received); ``dispatch`` takes a token to choose an idle worker
    (Swoole's preemptive mode) and falls back to round-robin when none is
    idle. The count makes a stale token detectable: if the master has sent
    that worker more fds than the token says it had received, the worker
    got a round-robin connection after posting it and is busy, so the token
    is dropped. A worker with fds already queued takes the next one without
    posting anything.

    Backpressure (``max_pending``). By default (``None``) every connection is
    handed to a worker at once, into a busy worker's channel if no worker is
    idle, and ``dispatch`` waits (within its timeout) only if every channel
    is full. With ``max_pending=N`` the master bounds what it hands out
    instead:

    * A worker takes at most ``max_inflight`` (default 1) connections that it
      has not yet finished: counted from the fds the master sent it since it
      last reported idle (by token, or by a wake byte on its channel, which a
      worker writes when the master asked for one because the worker reached
      its bound: the queue itself cannot be polled).
    * When no live worker can take a connection (none idle, every one at its
      bound or with a full channel), connections wait in the master's FIFO of
      at most N; each ``dispatch`` call first hands the oldest waiting
      connection to a worker that has become free.
    * A connection arriving while N are waiting goes to the overflow policy:
      ``on_overflow(conn)`` is called with the connection (non-blocking: the
      master must not wait on one client while others queue) to write a
      reply, e.g. ``HTTP/1.1 503 Service Unavailable``; ``OSError`` from it
      is ignored (the client went away), any other exception is raised from
      ``dispatch`` after the connection is closed. Then, or directly with
      the default ``on_overflow=None``, the master shuts the connection down
      and closes it, after reading what the client sent so that the client
      sees the reply and EOF rather than a reset. ``overflowed`` counts them.

    The contract is unchanged: ``dispatch`` returns the index of the worker
    that received a connection (the oldest waiting one, which is not
    necessarily the one accepted in that call) and the master then holds no
    fd of that connection; it raises ``TimeoutError`` if it handed over
    nothing within its timeout (waiting connections stay waiting), and
    ``NoLiveWorkerError`` after closing every waiting connection if no worker
    is alive. ``close()`` closes the waiting connections (their clients see
    EOF). Waiting connections move only inside ``dispatch``: call it again
    while ``pending`` is non-zero, even if the listener is not readable (a
    plain ``while True: dispatch(listener, timeout)`` loop does).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        *,
        max_pending: int | None = None,
        on_overflow: OverflowHandler | None = None,
        max_inflight: int = 1,
    ) -> None:
        if max_pending is not None:
            if isinstance(max_pending, bool) or not isinstance(max_pending, int):
                raise TypeError(
                    f"max_pending must be an int or None, got {type(max_pending).__name__}"
                )
            if max_pending < 0:
                raise ValueError(f"max_pending must be >= 0, got {max_pending}")
        if isinstance(max_inflight, bool) or not isinstance(max_inflight, int):
            raise TypeError(f"max_inflight must be an int, got {type(max_inflight).__name__}")
        if max_inflight < 1:
            raise ValueError(f"max_inflight must be >= 1, got {max_inflight}")
        if on_overflow is not None:
            if not callable(on_overflow):
                raise TypeError(f"on_overflow must be callable, got {type(on_overflow).__name__}")
            if max_pending is None:
                raise ValueError("on_overflow needs max_pending: without a bound nothing overflows")
        self.host = host
        self.protocol: ProtocolType | None = None
        self.max_pending = max_pending
        self.max_inflight = max_inflight
        self.on_overflow = on_overflow
        #: Connections given to the overflow policy so far.
        self.overflowed = 0
        self._owner_pid = os.getpid()
        self._listeners: list[socket.socket] = []
        self._queue: MessageQueue | None = None
        self._queue_alive = False
        self._token_queue: channel.TokenQueue | None = None
        self._master_ends: list[socket.socket | None] = []
        self._worker_ends: list[socket.socket | None] = []
        self._sealed = False
        self._dead: set[int] = set()
        self._next = 0
        self._sent: list[int] = []  # fds sent to each worker
        self._acked: list[int] = []  # fds each worker had received when it last reported idle
        self._wake_pending: list[bool] = []  # a wake byte is owed: send that worker nothing
        self._pending: collections.deque[int] = collections.deque()
        self._poller: select.poll | None = None
        self._poller_fd = -1
        self._inet_listener: socket.socket | None = None
        self._inet = False
        # Worker side.
        self._index: int | None = None
        self._chan: socket.socket | None = None
        self._received = 0  # messages received (fds, and fds the kernel had to drop)
        self._posted_at = -1  # self._received when the last idle token was posted
        self._wake_owed = False

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
        self._close_pending()
        if self._queue is not None:
            self._queue.remove()  # a no-op outside the creating process
            self._queue = None
        self._queue_alive = False
        self._token_queue = None

    @property
    def pending(self) -> int:
        """Connections waiting in the master for a free worker (backpressure mode)."""
        return len(self._pending)

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
        self._sent = [0] * workers
        self._acked = [0] * workers
        self._wake_pending = [False] * workers

    def dispatch(self, listener: socket.socket, timeout: float | None = None) -> int:
        if not self._master_ends:
            raise OSError(errno.EINVAL, "dispatch: call create_socket() and open_channels() first")
        if not self._sealed:
            self._seal()
        if self.max_pending is not None:
            return self._dispatch_bounded(listener, timeout)
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
        return self._accept_raw(listener)

    @staticmethod
    def _accept_raw(listener: socket.socket) -> int:
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
            index = self._pick(busy)
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
                raise self._no_live_worker()
            if self._send(index, fd, inet_tcp, busy):
                return index

    def _no_live_worker(self) -> NoLiveWorkerError:
        return NoLiveWorkerError(
            errno.EPIPE,
            f"dispatch: no live worker (all {len(self._master_ends)} channels are "
            "closed); connection closed",
        )

    def _send(self, index: int, fd: int, inet_tcp: bool, busy: set[int]) -> bool:
        """Pass ``fd`` to worker ``index``; False if that worker is dead or its channel full."""
        chan = self._master_ends[index]
        assert chan is not None
        wake = (
            self.max_pending is not None
            and self._sent[index] + 1 - self._acked[index] >= self.max_inflight
        )
        try:
            channel.send_fd(chan, fd, channel.make_tag(inet_tcp, wake))
        except BlockingIOError:
            busy.add(index)
            return False
        except OSError as exc:
            if exc.errno in channel.PEER_GONE:
                self._dead.add(index)
                return False
            raise OSError(
                exc.errno, f"dispatch: sendmsg to worker {index} failed: {exc.strerror}"
            ) from exc
        self._sent[index] += 1
        if wake:
            self._wake_pending[index] = True
        return True

    def _pick(self, busy: set[int]) -> int | None:
        """An idle worker from the token queue, else the next live one round-robin."""
        index = self._pick_token(busy)
        return index if index is not None else self._pick_round_robin(busy)

    def _pick_token(self, busy: set[int]) -> int | None:
        """The first fresh token's worker; stale tokens are dropped, those of busy workers kept."""
        deferred: list[bytes] = []  # tokens of workers whose channel is full right now
        found: int | None = None
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
            if len(body) != channel.TOKEN.size:
                continue  # not a token of this version: dropped
            index, received = channel.TOKEN.unpack(body)
            if not 0 <= index < len(self._master_ends) or index in self._dead:
                continue  # a token of a dead worker: dropped
            if received > self._acked[index]:
                self._acked[index] = received
            if received < self._sent[index]:
                continue  # stale: sent more since the worker posted it, so it is busy
            if index in busy:
                deferred.append(body)
                continue
            found = index
            break
        for body in deferred:
            self._post_token(body)  # give the worker its place back
        return found

    def _tokens(self) -> channel.TokenQueue:
        """The fast token path on this proxy's queue (made once per queue, per process)."""
        assert self._queue is not None
        if self._token_queue is None or self._token_queue.qid != self._queue.id:
            self._token_queue = channel.TokenQueue(self._queue.id, TOKEN_MTYPE)
        return self._token_queue

    def _pick_round_robin(self, busy: set[int]) -> int | None:
        n = len(self._master_ends)
        for k in range(n):
            index = (self._next + k) % n
            if index not in self._dead and index not in busy:
                self._next = index + 1
                return index
        return None

    def _post_token(self, body: bytes) -> bool:
        """Post an idle token; a full or vanished queue only costs the preference."""
        if self._queue is None or not self._queue_alive:
            return False
        try:
            self._tokens().post(body)
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
        poller = select.poll()
        for i in busy:
            chan = self._master_ends[i]
            if chan is not None:
                poller.register(chan.fileno(), select.POLLOUT)
        return bool(poller.poll(None if remaining is None else _poll_ms(remaining)))

    # -- master: backpressure -------------------------------------------

    def _dispatch_bounded(self, listener: socket.socket, timeout: float | None) -> int:
        """``dispatch`` with a bounded hand-out and a bounded FIFO (see the class docstring)."""
        lfd = listener.fileno()
        if lfd < 0:
            raise OSError(errno.EBADF, "dispatch: the listener is closed")
        assert self.max_pending is not None
        inet_tcp = self._is_inet_tcp(listener)
        deadline = None if timeout is None else time.monotonic() + max(timeout, 0.0)
        busy: set[int] = set()  # channels that were full in this call
        while True:
            # The oldest waiting connection goes to the first worker that can take it.
            while self._pending:
                index = self._pick_free(busy)
                if index is None:
                    break
                fd = self._pending.popleft()
                retry = False
                try:
                    if self._send(index, fd, inet_tcp, busy):
                        return index
                    retry = True  # that worker is dead or its channel full: choose again
                finally:
                    # Handed over, or failed (as unbounded: closed, never stranded nor sent twice).
                    if retry:
                        self._pending.appendleft(fd)
                    else:
                        os.close(fd)
            if self._pending and len(self._dead) == len(self._master_ends):
                self._close_pending()
                raise self._no_live_worker()
            while len(self._pending) > self.max_pending:
                self._reject(self._pending.pop(), inet_tcp)  # the newest one overflows
            if self._wait_bounded(lfd, busy, deadline):
                self._pending.append(self._accept_raw(listener))

    def _pick_free(self, busy: set[int]) -> int | None:
        """A live worker below its bound: known idle, else by token, else after reading wakes."""
        index = self._pick_known_idle(busy)
        if index is None:
            index = self._pick_token(busy)
        if index is None and any(self._wake_pending):
            self._read_wakes(0)
            index = self._pick_known_idle(busy)
        if index is None:
            index = self._pick_below_bound(busy)
        return index

    def _pick_known_idle(self, busy: set[int]) -> int | None:
        n = len(self._master_ends)
        for k in range(n):
            i = (self._next + k) % n
            if (
                self._sent[i] == self._acked[i]
                and not self._wake_pending[i]
                and i not in self._dead
                and i not in busy
            ):
                self._next = i + 1
                return i
        return None

    def _pick_below_bound(self, busy: set[int]) -> int | None:
        """The least loaded live worker still below ``max_inflight`` (round-robin among equals)."""
        n = len(self._master_ends)
        best: int | None = None
        best_load = self.max_inflight
        for k in range(n):
            i = (self._next + k) % n
            load = self._sent[i] - self._acked[i]
            free = not self._wake_pending[i] and i not in self._dead and i not in busy
            if free and load < best_load:
                best, best_load = i, load
        if best is not None:
            self._next = best + 1
        return best

    def _wait_bounded(self, lfd: int, busy: set[int], deadline: float | None) -> bool:
        """Wait for a connection, a wake, or a full channel draining; True: the listener is ready.

        TimeoutError at the deadline. Wakes and full channels are watched only
        while connections wait: otherwise they are read when a choice is due.
        """
        poller = select.poll()
        poller.register(lfd, select.POLLIN)
        watched: dict[int, int] = {}
        if self._pending:
            for i, chan in enumerate(self._master_ends):
                if chan is None or i in self._dead:
                    continue
                mask = (_POLL_IN if self._wake_pending[i] else 0) | (
                    select.POLLOUT if i in busy else 0
                )
                if mask:
                    poller.register(chan.fileno(), mask)
                    watched[chan.fileno()] = i
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                waiting = f"; {len(self._pending)} connection(s) wait for a free worker"
                raise TimeoutError(
                    errno.ETIMEDOUT,
                    f"dispatch: no worker took a connection within the timeout"
                    f"{waiting if self._pending else ''}",
                )
            try:
                events = poller.poll(None if remaining is None else _poll_ms(remaining))
            except OSError as exc:
                raise OSError(exc.errno, f"dispatch: poll() failed: {exc}") from exc
            listener_ready = False
            for fd, ev in events:
                if fd == lfd:
                    if ev & (select.POLLERR | select.POLLNVAL):
                        raise OSError(errno.EBADF, "dispatch: the listener failed or was closed")
                    listener_ready = True
                    continue
                i = watched[fd]
                if ev & select.POLLOUT:
                    busy.discard(i)
                if ev & _POLL_IN:
                    self._read_wake(i)
            if events:
                return listener_ready

    def _read_wakes(self, timeout_ms: int) -> None:
        """Read the wake bytes that have arrived from workers the master waits for."""
        poller = select.poll()
        watched: dict[int, int] = {}
        for i, chan in enumerate(self._master_ends):
            if chan is not None and self._wake_pending[i] and i not in self._dead:
                poller.register(chan.fileno(), _POLL_IN)
                watched[chan.fileno()] = i
        if watched:
            for fd, _ in poller.poll(timeout_ms):
                self._read_wake(watched[fd])

    def _read_wake(self, index: int) -> None:
        """Worker ``index`` is idle (a wake byte), or dead (EOF or an error on its channel)."""
        chan = self._master_ends[index]
        assert chan is not None
        try:
            data = chan.recv(64, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._dead.add(index)
            return
        # The master sent nothing since its wake request: the worker has finished all of it.
        self._acked[index] = self._sent[index]
        self._wake_pending[index] = False

    def _reject(self, fd: int, inet_tcp: bool) -> None:
        """The overflow policy for one connection: the reply (if any), then shutdown and close."""
        self.overflowed += 1
        if inet_tcp:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, fileno=fd)
        else:
            sock = socket.socket(fileno=fd)
        with sock:
            sock.setblocking(False)
            try:
                if self.on_overflow is not None:
                    # OSError: the client is gone or not reading; it gets EOF below.
                    with contextlib.suppress(OSError):
                        self.on_overflow(sock)
            finally:
                if sock.fileno() >= 0:
                    _finish(sock)

    def _close_pending(self) -> None:
        while self._pending:
            os.close(self._pending.popleft())

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
        self._close_pending()
        self._worker_ends, self._master_ends, self._listeners = [], [], []
        self._chan, self._index = chan, index

    def accept(self, listener: socket.socket) -> socket.socket:
        """The next connection from the master; first without waiting, so that a worker
        with connections queued takes them without posting an idle token."""
        chan = self._chan
        if chan is None:
            raise OSError(errno.EINVAL, "accept: call enter_worker() first (MasterProxy)")
        try:
            msg, fds, truncated = channel.recv_message(chan, block=False)
        except BlockingIOError:
            self._report_idle(chan)
            msg, fds, truncated = channel.recv_message(chan)
        if msg or fds:
            self._received += 1
            if channel.wants_wake(msg):
                self._wake_owed = True
        return channel.socket_for(channel.one_fd(msg, fds, truncated), msg)

    def _report_idle(self, chan: socket.socket) -> None:
        """Nothing queued: tell the master, by a wake byte if it asked for one, else a token."""
        if self._wake_owed:
            self._wake_owed = False
            self._posted_at = self._received
            with contextlib.suppress(OSError):  # the master is gone: the next receive sees EOF
                channel.send_wake(chan)
            return
        if self._posted_at == self._received or self._index is None:
            return  # this idle period is advertised already
        if self._post_token(channel.TOKEN.pack(self._index, self._received)):
            self._posted_at = self._received


def _finish(sock: socket.socket) -> None:
    """Send FIN after whatever the overflow reply wrote, and drop what the client sent.

    Closing a socket with unread data makes the kernel send RST, which can
    destroy the reply before the client reads it; the client must see the
    reply and then EOF.
    """
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        return
    drained = 0
    while drained < _DRAIN_LIMIT:
        try:
            data = sock.recv(65536)
        except OSError:  # BlockingIOError included: nothing more right now
            return
        if not data:
            return
        drained += len(data)
