"""Backpressure for MasterProxy: a bounded hand-out, a bounded FIFO, an overflow policy.

``MasterProxy(max_pending=N, on_overflow=None, max_inflight=1)``. By default
(``max_pending=None``) the master hands every connection to a worker at once,
into a busy worker's channel if no worker is idle. With ``max_pending=N`` it
bounds what it hands out instead:

* A worker takes at most ``max_inflight`` connections that it has not yet
  finished: counted from the fds the master sent it since it last reported
  idle (by token, or by a wake byte on its channel, which a worker writes when
  the master asked for one because the worker reached its bound: the queue
  itself cannot be polled).
* When no live worker can take a connection (none idle, every one at its
  bound or with a full channel), connections wait in the master's FIFO of at
  most N; each ``dispatch`` call first hands the oldest waiting connection to
  a worker that has become free.
* A connection arriving while N are waiting goes to the overflow policy:
  ``on_overflow(conn)`` is called with the connection (non-blocking: the
  master must not wait on one client while others queue) to write a reply,
  e.g. ``HTTP/1.1 503 Service Unavailable``; ``OSError`` from it is ignored
  (the client went away), any other exception is raised from ``dispatch``
  after the connection is closed. Then, or directly with the default
  ``on_overflow=None``, the master shuts the connection down and closes it,
  after reading what the client sent so that the client sees the reply and
  EOF rather than a reset. ``overflowed`` counts them.

The contract is unchanged: ``dispatch`` returns the index of the worker that
received a connection (the oldest waiting one, which is not necessarily the
one accepted in that call) and the master then holds no fd of that
connection; it raises ``TimeoutError`` if it handed over nothing within its
timeout (waiting connections stay waiting), and ``NoLiveWorkerError`` after
closing every waiting connection if no worker is alive. ``close()`` closes
the waiting connections (their clients see EOF). Waiting connections move
only inside ``dispatch``: call it again while ``pending`` is non-zero, even if
the listener is not readable (a plain ``while True: dispatch(listener,
timeout)`` loop does).
"""

from __future__ import annotations

import collections
import contextlib
import errno
import os
import select
import socket
import time
from collections.abc import Callable
from typing import Protocol

from . import channel

#: Bytes read (and dropped) from a rejected connection before it is closed, so that
#: the close sends FIN after the reply instead of RST (unread data triggers RST).
DRAIN_LIMIT = 1 << 20
_POLL_IN = select.POLLIN | select.POLLHUP | select.POLLERR

#: ``on_overflow(conn)``: write a reply to a rejected connection (the master closes it).
OverflowHandler = Callable[[socket.socket], object]


class Channels(Protocol):
    """What the bounded dispatch shares with its MasterProxy: the worker channels and
    their counters, and the master's own steps for a send, a token, an accept.

    Declared here so that this module needs nothing from master.py (which
    imports it), and so a subclass of MasterProxy sees what it must keep.
    """

    _master_ends: list[socket.socket | None]
    _dead: set[int]  # workers whose channel refused: skipped
    _sent: list[int]  # fds sent to each worker
    _acked: list[int]  # fds each worker had received when it last reported idle
    _next: int  # the round-robin cursor

    def _send(self, index: int, fd: int, busy: set[int], tag: bytes = ...) -> bool: ...
    def _pick_token(self, busy: set[int]) -> int | None: ...
    def _accept(self, listener: socket.socket) -> int: ...
    def _no_live_worker(self) -> OSError: ...


class Backpressure:
    """The bounded dispatch of one MasterProxy (see the module docstring)."""

    @classmethod
    def configure(
        cls,
        max_pending: int | None,
        on_overflow: OverflowHandler | None,
        max_inflight: int,
    ) -> Backpressure | None:
        """Validate the settings before anything exists; None for the unbounded default."""
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
        if max_pending is None:
            return None
        return cls(max_pending, on_overflow, max_inflight)

    def __init__(
        self,
        max_pending: int,
        on_overflow: OverflowHandler | None,
        max_inflight: int,
    ) -> None:
        self.max_pending = max_pending
        self.on_overflow = on_overflow
        self.max_inflight = max_inflight
        self.overflowed = 0
        self.waiting: collections.deque[int] = collections.deque()
        self.wake_pending: list[bool] = []  # a wake byte is owed: send that worker nothing

    def open(self, workers: int) -> None:
        self.wake_pending = [False] * workers

    def close_waiting(self) -> None:
        while self.waiting:
            os.close(self.waiting.popleft())

    def dispatch(self, master: Channels, listener: socket.socket, timeout: float | None) -> int:
        lfd = listener.fileno()
        if lfd < 0:
            raise OSError(errno.EBADF, "dispatch: the listener is closed")
        deadline = None if timeout is None else time.monotonic() + max(timeout, 0.0)
        busy: set[int] = set()  # channels that were full in this call
        while True:
            # The oldest waiting connection goes to the first worker that can take it.
            while self.waiting and (index := self._pick_free(master, busy)) is not None:
                fd = self.waiting.popleft()
                wake = master._sent[index] + 1 - master._acked[index] >= self.max_inflight
                try:
                    sent = master._send(index, fd, busy, channel.TAG_WAKE if wake else channel.TAG)
                except BaseException:
                    os.close(fd)  # failed as unbounded: closed, never stranded nor sent twice
                    raise
                if sent:
                    os.close(fd)
                    self.wake_pending[index] = wake
                    return index
                self.waiting.appendleft(fd)  # that worker is dead or its channel full
            if self.waiting and len(master._dead) == len(master._master_ends):
                self.close_waiting()
                raise master._no_live_worker()
            while len(self.waiting) > self.max_pending:
                self._reject(self.waiting.pop())  # the newest one overflows
            if self._wait(master, lfd, busy, deadline):
                self.waiting.append(master._accept(listener))

    def _pick_free(self, master: Channels, busy: set[int]) -> int | None:
        """A live worker below its bound: known idle, else by token, else after reading wakes."""
        index = self._pick_known_idle(master, busy)
        if index is None:
            index = master._pick_token(busy)
        if index is None and any(self.wake_pending):
            self._read_wakes(master)
            index = self._pick_known_idle(master, busy)
        if index is None:
            index = self._pick_below_bound(master, busy)
        return index

    def _free(self, master: Channels, busy: set[int], i: int) -> bool:
        return not self.wake_pending[i] and i not in master._dead and i not in busy

    def _pick_known_idle(self, master: Channels, busy: set[int]) -> int | None:
        n = len(master._master_ends)
        for k in range(n):
            i = (master._next + k) % n
            if master._sent[i] == master._acked[i] and self._free(master, busy, i):
                master._next = i + 1
                return i
        return None

    def _pick_below_bound(self, master: Channels, busy: set[int]) -> int | None:
        """The least loaded live worker still below ``max_inflight`` (round-robin among equals)."""
        n = len(master._master_ends)
        best: int | None = None
        best_load = self.max_inflight
        for k in range(n):
            i = (master._next + k) % n
            load = master._sent[i] - master._acked[i]
            if load < best_load and self._free(master, busy, i):
                best, best_load = i, load
        if best is not None:
            master._next = best + 1
        return best

    def _wake_watch(self, master: Channels) -> dict[int, int]:
        """The channels of live workers the master waits a wake byte from."""
        owed = enumerate(zip(self.wake_pending, master._master_ends, strict=True))
        chans = [chan for i, (wake, chan) in owed if wake and i not in master._dead]
        return channel.watch(chans, _POLL_IN)

    def _wait(self, master: Channels, lfd: int, busy: set[int], deadline: float | None) -> bool:
        """Wait for a connection, a wake, or a full channel draining; True: the listener is ready.

        TimeoutError at the deadline. Wakes and full channels are watched only
        while connections wait: otherwise they are read when a choice is due.
        """
        watch = {lfd: select.POLLIN}
        if self.waiting:
            live_busy = busy - master._dead
            watch.update(self._wake_watch(master))
            full = [master._master_ends[i] for i in live_busy]
            for fd, mask in channel.watch(full, select.POLLOUT).items():
                watch[fd] = watch.get(fd, 0) | mask
        events = channel.poll_until(watch, deadline)
        if not events:
            waiting = f"; {len(self.waiting)} connection(s) wait for a free worker"
            raise TimeoutError(
                errno.ETIMEDOUT,
                "dispatch: no worker took a connection within the timeout"
                f"{waiting if self.waiting else ''}",
            )
        by_fd = {chan.fileno(): i for i, chan in enumerate(master._master_ends) if chan}
        for fd, ev in events:
            if fd == lfd:
                if ev & (select.POLLERR | select.POLLNVAL):
                    raise OSError(errno.EBADF, "dispatch: the listener failed or was closed")
                continue
            if ev & select.POLLOUT:
                busy.discard(by_fd[fd])
            if ev & _POLL_IN:
                self._read_wake(master, by_fd[fd])
        return any(fd == lfd for fd, _ in events)

    def _read_wakes(self, master: Channels) -> None:
        """Read the wake bytes that have arrived already (no wait)."""
        watch = self._wake_watch(master)
        if watch:
            by_fd = {chan.fileno(): i for i, chan in enumerate(master._master_ends) if chan}
            for fd, _ in channel.poll_until(watch, time.monotonic()):
                self._read_wake(master, by_fd[fd])

    def _read_wake(self, master: Channels, index: int) -> None:
        """Worker ``index`` is idle (a wake byte), or dead (EOF or an error on its channel)."""
        chan = master._master_ends[index]
        assert chan is not None
        try:
            data = chan.recv(64, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            master._dead.add(index)
            return
        # The master sent nothing since its wake request: the worker has finished all of it.
        master._acked[index] = master._sent[index]
        self.wake_pending[index] = False

    def _reject(self, fd: int) -> None:
        """The overflow policy for one connection: the reply (if any), then shutdown and close."""
        self.overflowed += 1
        with socket.socket(fileno=fd) as sock:
            sock.setblocking(False)
            try:
                if self.on_overflow is not None:
                    # OSError: the client is gone or not reading; it gets EOF below.
                    with contextlib.suppress(OSError):
                        self.on_overflow(sock)
            finally:
                if sock.fileno() >= 0:
                    _finish(sock)


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
    while drained < DRAIN_LIMIT:
        try:
            data = sock.recv(65536)
        except OSError:  # BlockingIOError included: nothing more right now
            return
        if not data:
            return
        drained += len(data)
