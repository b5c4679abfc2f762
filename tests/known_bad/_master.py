"""The corpus's correct MasterProxy: reference.MasterProxy pinned at commit 78248fa, with hooks.

Why pinned: the reference proxy's internals are being optimised (raw-fd accept,
poll objects, preallocated queue buffers, tag bits, wake-up backpressure), and
a defect written as an override of a private method would silently turn into
a different defect, or into no defect at all, whenever they change. So every
fd-passing proxy of the corpus derives from this copy of the reference as it
was reviewed (commit 78248fa, ``reference/master.py`` and ``reference/channel.py``,
the latter in ``_channel``), and the corpus test checks that this copy itself
passes every requirement, like the reference proxies.

One deviation from 78248fa fixes a race of that version (FP-12 failed under
load): a worker's idle token stayed in the queue when the worker got a
connection by round-robin instead, and the master later took that stale token
and gave a new connection to the busy worker. Here a token carries how many
fds the worker had received when it posted it (``"index:count"``); the master
drops a token older than what it has sent that worker, and a worker posts a
fresh token whenever it returns to ``accept`` with none posted since its last
connection. (The reference fixed the same race later, in 98ea940.)

Four hooks are added, which the defects override instead of copying the
dispatch loop:

* ``_channel_pair`` makes one channel (``_channel.channel_pair``);
* ``_send_fd`` sends one fd to a worker's channel (``_channel.send_fd``);
* ``_peer_gone`` decides what a dead worker's channel means (skip it, re-route);
* ``_recv_fd`` receives one fd in a worker (``_channel.recv_fd``).

What follows is the reference's own description.

MasterProxy: the master accepts, a worker serves, the fd crosses with SCM_RIGHTS.

Each defect the seed's review found has a counterpart here: the queue is kept
and removed (and only by its creator), every worker end stays open until the
workers exist and then leaves the master, every send is checked, every error
keeps the errno of the call that failed and names that call.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import time

from fdpass_conformance.contract import ProtocolType
from fdpass_conformance.sysv import MessageQueue
from reference.listener import open_listener, validate_port, validate_protocol

from . import _channel as channel

#: The idle-token message type: one FIFO of worker indices.
TOKEN_MTYPE = 1
#: The queue vanished under us (removed from outside): serve without tokens.
_QUEUE_GONE = frozenset({errno.EIDRM, errno.EINVAL})


#: The requirements whose checks need a connection served end to end (``@needs("served")``
#: and ``require_served`` in the suites): a defect that stops all service fails FP-02 and
#: leaves these blocked by it, not failed (see ``BLOCKED`` in ``known_bad/__init__.py``).
SERVED_CHECKS = frozenset(
    {
        "SP-09", "SP-10", "SP-11", "SP-12", "SP-13", "SP-16", "SP-17", "SP-20",
        "FP-04", "FP-05", "FP-06", "FP-07", "FP-08", "FP-10", "FP-12", "FP-13", "FP-14",
        "IPC-07", "IPC-08", "IPC-10",
        "FLT-01", "FLT-02", "FLT-03", "FLT-04", "FLT-05", "FLT-06",
    }
)  # fmt: skip


class NoLiveWorkerError(BrokenPipeError):
    """Every worker's channel refused the connection; it was closed."""


class PinnedMasterProxy:
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
        # Worker side.
        self._index: int | None = None
        self._chan: socket.socket | None = None
        self._sent: dict[int, int] = {}  # master: fds sent per worker, to spot stale tokens
        self._received = 0  # worker: fds received so far
        self._posted = -1  # worker: the count its last posted token carried

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
                    m, w = self._channel_pair()
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
            return self._hand_over(fd, deadline)
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
        if listener.fileno() < 0:
            raise OSError(errno.EBADF, "dispatch: the listener is closed")
        if timeout is not None:
            try:
                ready, _, _ = select.select([listener], [], [], max(timeout, 0.0))
            except OSError as exc:
                raise OSError(exc.errno, f"dispatch: select() on listener failed: {exc}") from exc
            if not ready:
                raise TimeoutError(errno.ETIMEDOUT, f"dispatch: no connection within {timeout}s")
        try:
            conn, _ = listener.accept()
        except OSError as exc:
            raise OSError(exc.errno, f"dispatch: accept() failed: {exc.strerror}") from exc
        return conn.detach()

    def _hand_over(self, fd: int, deadline: float | None) -> int:
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
                self._send_fd(chan, fd, channel.TAG_TOKEN if via_token else channel.TAG_ROUND_ROBIN)
                self._sent[index] = self._sent.get(index, 0) + 1
                return index
            except BlockingIOError:
                busy.add(index)
                if via_token:
                    self._post_token(index)  # give the worker its place back
            except OSError as exc:
                if exc.errno in channel.PEER_GONE:
                    self._peer_gone(index, exc)
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
                msg = self._queue.receive(TOKEN_MTYPE, block=False)
            except OSError as exc:
                if exc.errno not in _QUEUE_GONE:
                    raise OSError(exc.errno, f"dispatch: msgrcv failed: {exc.strerror}") from exc
                self._queue_alive = False
                break
            if msg is None:
                break
            index_text, _, count_text = msg[1].decode().partition(":")
            index = int(index_text)
            if int(count_text) < self._sent.get(index, 0):
                continue  # stale: the worker got a connection since it posted this token
            if index in busy:
                deferred.append(index)
            elif 0 <= index < len(self._master_ends) and index not in self._dead:
                return index, True
            # else a stale token of a dead worker: dropped
        return None

    def _pick_round_robin(self, busy: set[int]) -> tuple[int | None, bool]:
        n = len(self._master_ends)
        for k in range(n):
            index = (self._next + k) % n
            if index not in self._dead and index not in busy:
                self._next = index + 1
                return index, False
        return None, False

    def _post_token(self, index: int) -> bool:
        """Post an idle token; a full or vanished queue only costs the preference.

        A worker's token carries its received count; one the master gives back
        (its channel was full) carries what the master has sent that worker.
        """
        if self._queue is None or not self._queue_alive:
            return False
        count = self._received if self._index is not None else self._sent.get(index, 0)
        try:
            self._queue.send(TOKEN_MTYPE, f"{index}:{count}".encode(), block=False)
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
        self._announce_idle()
        _tag, fd = self._recv_fd(self._chan)
        self._received += 1
        return socket.socket(fileno=fd)

    def _announce_idle(self) -> None:
        """Worker: post a token unless one was posted since the last connection."""
        index = self._index
        if index is not None and self._posted != self._received and self._post_token(index):
            self._posted = self._received

    # -- hooks of the corpus (not in the reference) ------------------------

    def _channel_pair(self) -> tuple[socket.socket, socket.socket]:
        """(master end, worker end) of one channel."""
        return channel.channel_pair()

    def _send_fd(self, chan: socket.socket, fd: int, tag: bytes) -> None:
        """Send one fd to a worker's channel; every failure raises."""
        channel.send_fd(chan, fd, tag)

    def _peer_gone(self, index: int, exc: OSError) -> None:
        """Worker ``index``'s channel reported a dead peer: skip it from now on (re-route)."""
        self._dead.add(index)

    def _recv_fd(self, chan: socket.socket) -> tuple[bytes, int]:
        """Receive one (tag, fd) in a worker; EOFError once the master closed."""
        return channel.recv_fd(chan)
