"""The load generator: forked client processes, released together, each a closed loop.

Why processes and blocking sockets: a client must cost as little CPU per
connection as possible, or on a small machine it competes with the server
and compresses every difference. A blocking connect/send/recv/close loop in
its own process is the cheapest Python client there is (no selector
registration per connection), and ``--clients`` such loops give that many
connections in flight. Each client measures its own CPU time (precisely,
with CLOCK_PROCESS_CPUTIME_ID) so that the report can tell when the load
generator, rather than the server, was the bottleneck.

A phase starts when the controller closes the "go" pipe (all clients wait
on it after fork, so forking is not measured) and ends when the last client
is done. Every socket has a timeout and every wait a deadline: a broken
implementation shows up as errors in the report, never as a hang.
"""

from __future__ import annotations

import array
import contextlib
import functools
import os
import pickle
import select
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..processes import fork_child, kill_and_reap, wait_pid
from .procstat import own_cpu_seconds
from .servers import ANSWER

#: A connection that takes longer than this counts as an error (and ends that client).
SOCKET_TIMEOUT = 5.0
#: A client stops after this many failed connections in a row instead of hammering.
MAX_CONSECUTIVE_ERRORS = 20
REQUEST = b"ping"


@dataclass
class ClientResult:
    """What one client did in one phase."""

    connections: int = 0
    errors: int = 0
    first_error: str = ""
    start: float = 0.0
    end: float = 0.0
    cpu: float = 0.0
    latencies: array.array[float] = field(default_factory=lambda: array.array("d"))


@dataclass
class PhaseResult:
    """All clients of one phase together."""

    connections: int
    errors: int
    first_error: str
    wall: float
    client_cpu: float
    client_share: float  # mean busy fraction of one client process (1.0 = never waited)
    latencies: list[float]
    server_cpu: dict[str, float] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.connections / self.wall if self.wall > 0 else 0.0


def _connect_loop(
    port: int, deadline_s: float | None, count: int | None, sample: bool
) -> ClientResult:
    """Connect, send, read the answer to EOF, close; until the deadline or ``count``."""
    res = ClientResult()
    addr = ("127.0.0.1", port)
    monotonic = time.monotonic
    unpack = ANSWER.unpack_from
    size = ANSWER.size
    lat = res.latencies
    res.start = monotonic()
    cpu0 = own_cpu_seconds()
    stop_at = None if deadline_s is None else res.start + deadline_s
    todo = count if count is not None else -1
    consecutive = 0
    while todo != 0:
        if stop_at is not None and monotonic() >= stop_at:
            break
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.settimeout(SOCKET_TIMEOUT)
            t0 = monotonic()
            sock.connect(addr)
            sock.sendall(REQUEST)
            data = sock.recv(256)
            while len(data) < size + len(REQUEST):
                more = sock.recv(256)
                if not more:
                    break
                data += more
            if sock.recv(256):  # the worker closes after answering: this is EOF
                raise OSError("the server sent more than one answer")
            if len(data) < size:
                raise OSError(f"short answer ({len(data)} bytes): the connection was dropped")
            if sample:
                lat.append(unpack(data)[1] - t0)
            res.connections += 1
            consecutive = 0
        except OSError as exc:
            res.errors += 1
            consecutive += 1
            if not res.first_error:
                res.first_error = f"{type(exc).__name__}: {exc}"
            if consecutive >= MAX_CONSECUTIVE_ERRORS:
                break
        finally:
            sock.close()
        if todo > 0:
            todo -= 1
    res.cpu = own_cpu_seconds() - cpu0
    res.end = monotonic()
    return res


def _client_body(
    go_fd: int, out_fd: int, close_fds: list[int], work: Callable[[], ClientResult]
) -> int:
    for fd in close_fds:
        with contextlib.suppress(OSError):
            os.close(fd)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    os.write(out_fd, b"R")
    os.read(go_fd, 1)  # returns b"" when the controller closes the pipe: go
    data = pickle.dumps(work())
    view = memoryview(data)
    while view:
        view = view[os.write(out_fd, view) :]
    return 0


def run_clients(
    works: list[Callable[[], ClientResult]],
    *,
    measure: Callable[[], dict[str, float]] | None = None,
    deadline: float,
) -> PhaseResult:
    """Fork one client per ``works`` item, release them together, collect their results.

    ``measure`` is called right before the release and right after the last
    client is done (the CPU counters of the server's processes); the result
    holds the difference. Clients still running at ``deadline`` seconds are
    killed and their work counts as errors.
    """
    go_r, go_w = os.pipe()
    pipes: dict[int, int] = {}  # read fd -> pid
    try:
        for work in works:
            out_r, out_w = os.pipe()
            keep_out = [go_w, out_r, *pipes]
            pid = fork_child(functools.partial(_client_body, go_r, out_w, keep_out, work))
            os.close(out_w)
            pipes[out_r] = pid
        os.close(go_r)
        go_r = -1
        _wait_ready(list(pipes), deadline=10.0)
        before = measure() if measure else {}
        t0 = time.monotonic()
        os.close(go_w)
        go_w = -1
        raw = _collect(list(pipes), deadline)
        t_done = time.monotonic()
        after = measure() if measure else {}
    finally:
        for fd in (go_r, go_w):
            if fd >= 0:
                os.close(fd)
        for fd, pid in pipes.items():
            with contextlib.suppress(OSError):
                os.close(fd)
            kill_and_reap(pid)
    results: list[ClientResult] = []
    timed_out = 0
    for data in raw:
        if data:
            results.append(pickle.loads(data))
        else:
            timed_out += 1
    ends = [r.end for r in results if r.end]
    wall = (max(ends) if ends else t_done) - t0
    lat: list[float] = []
    for r in results:
        lat.extend(r.latencies)
    busy = [r.cpu / (r.end - r.start) for r in results if r.end > r.start]
    first = next((r.first_error for r in results if r.first_error), "")
    if timed_out and not first:
        first = f"{timed_out} client(s) did not finish within {deadline:.0f}s and were killed"
    return PhaseResult(
        connections=sum(r.connections for r in results),
        errors=sum(r.errors for r in results) + timed_out,
        first_error=first,
        wall=wall,
        client_cpu=sum(r.cpu for r in results),
        client_share=max(busy) if busy else 0.0,
        latencies=lat,
        server_cpu={k: after.get(k, 0.0) - v for k, v in before.items()},
    )


def _wait_ready(fds: list[int], deadline: float) -> None:
    pending = set(fds)
    end = time.monotonic() + deadline
    while pending:
        left = end - time.monotonic()
        ready = select.select(list(pending), [], [], max(left, 0.0))[0] if left > 0 else []
        if not ready:
            raise TimeoutError(f"{len(pending)} load client(s) did not start within {deadline}s")
        for fd in ready:
            if os.read(fd, 1) != b"R":
                raise ChildProcessError("a load client exited before it started")
            pending.discard(fd)


def _collect(fds: list[int], deadline: float) -> list[bytes]:
    """Everything each client writes until EOF; b"" for a client past the deadline."""
    bufs: dict[int, list[bytes]] = {fd: [] for fd in fds}
    open_fds = set(fds)
    end = time.monotonic() + deadline
    while open_fds:
        left = end - time.monotonic()
        if left <= 0:
            for fd in open_fds:
                bufs[fd] = []
            break
        for fd in select.select(list(open_fds), [], [], left)[0]:
            chunk = os.read(fd, 1 << 16)
            if chunk:
                bufs[fd].append(chunk)
            else:
                open_fds.discard(fd)
    return [b"".join(bufs[fd]) for fd in fds]


def throughput_works(
    port: int, clients: int, seconds: float | None, connections: int | None
) -> list[Callable[[], ClientResult]]:
    """``clients`` closed loops, sharing ``connections`` or each running ``seconds``."""
    works: list[Callable[[], ClientResult]] = []
    for k in range(clients):
        share = None
        if connections is not None:
            share = connections // clients + (1 if k < connections % clients else 0)
        works.append(functools.partial(_connect_loop, port, seconds, share, True))
    return works


def latency_works(port: int, samples: int) -> list[Callable[[], ClientResult]]:
    """One client, sequential connections: latency without queueing behind other clients."""
    return [functools.partial(_connect_loop, port, None, samples, True)]


# -- the floor: send_fds/recv_fds between two processes, no proxy ----------------


def _floor_sender(
    chan: socket.socket, seconds: float | None, count: int | None, samples: int
) -> ClientResult:
    """Pass one TCP socket's fd over and over: first pipelined (rate, CPU), then ping-pong.

    The receiver closes every copy it gets, as a worker does; in the ping-pong
    part it answers with the CLOCK_MONOTONIC time at which ``recv_fds``
    returned, the same instant a bench worker stamps after ``accept``.
    """
    res = ClientResult()
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(1)
    peer = socket.create_connection(lst.getsockname())
    conn, _ = lst.accept()
    fds = [conn.fileno()]
    msg = [b"f"]
    send_fds = socket.send_fds
    monotonic = time.monotonic
    try:
        res.start = monotonic()
        cpu0 = own_cpu_seconds()
        stop_at = None if seconds is None else res.start + seconds
        todo = count if count is not None else -1
        while todo != 0 and (stop_at is None or monotonic() < stop_at):
            send_fds(chan, msg, fds)
            res.connections += 1
            if todo > 0:
                todo -= 1
        chan.send(b"s")  # end of the pipelined part: the receiver acknowledges it
        chan.recv(16)
        res.cpu = own_cpu_seconds() - cpu0
        res.end = monotonic()
        for _ in range(samples):
            t0 = monotonic()
            send_fds(chan, [b"p"], fds)
            res.latencies.append(ANSWER.unpack(chan.recv(ANSWER.size))[1] - t0)
        chan.send(b"e")
    finally:
        for s in (conn, peer, lst):
            s.close()
    return res


def _floor_receiver(chan: socket.socket) -> None:
    recv_fds = socket.recv_fds
    close = os.close
    monotonic = time.monotonic
    pid = os.getpid()
    while True:
        msg, fds, _, _ = recv_fds(chan, 16, 1)
        stamp = monotonic()
        for fd in fds:
            close(fd)
        if msg == b"p":
            chan.send(ANSWER.pack(pid, stamp))
        elif msg == b"s":
            chan.send(b"k")
        elif msg != b"f":
            return


def floor_phase(
    seconds: float | None, count: int | None, samples: int, deadline: float
) -> tuple[PhaseResult, PhaseResult]:
    """(pipelined phase with the sender's CPU, ping-pong latency phase) of the floor."""
    kind = getattr(socket, "SOCK_SEQPACKET", socket.SOCK_STREAM)
    sender_end, receiver_end = socket.socketpair(socket.AF_UNIX, kind)
    receiver_pid = -1
    try:

        def receive() -> int:
            sender_end.close()
            _floor_receiver(receiver_end)
            return 0

        receiver_pid = fork_child(receive)
        receiver_end.close()
        phase = run_clients(
            [functools.partial(_floor_sender, sender_end, seconds, count, samples)],
            deadline=deadline,
        )
    finally:
        sender_end.close()
        receiver_end.close()
        if receiver_pid > 0:
            with contextlib.suppress(TimeoutError, ChildProcessError):  # killed past 2 s
                wait_pid(receiver_pid, 2.0)
    rate_phase = PhaseResult(
        phase.connections,
        phase.errors,
        phase.first_error,
        phase.wall,
        phase.client_cpu,
        phase.client_share,
        [],
    )
    lat_phase = PhaseResult(0, 0, "", 0.0, 0.0, 0.0, phase.latencies)
    return rate_phase, lat_phase


def describe(obj: Any) -> str:
    return type(obj).__name__


# -- bursts: the master's own cost per connection, without idle waits -------------


@dataclass
class BurstResult:
    """One burst: how many connections were answered and the server's CPU meanwhile."""

    connections: int
    errors: int
    first_error: str
    server_cpu: dict[str, float]


def burst_phase(
    port: int,
    master_pid: int,
    size: int,
    measure: Callable[[], dict[str, float]],
    deadline: float,
) -> BurstResult:
    """Queue ``size`` connections while the master is stopped, then let it dispatch them all.

    In the closed-loop phases the master sleeps and wakes once per
    connection, and that wake-up is a large, noisy part of its CPU time. Here
    SIGSTOP holds the master while the clients connect and send their
    request (the kernel completes the handshakes and queues them in the
    listener's backlog); after SIGCONT the master finds them all waiting and
    dispatches back to back, so its CPU time per connection is the cost of
    the dispatch path itself. Only for a master that dispatches; the caller
    makes sure of that.
    """
    socks: list[socket.socket] = []
    errors = 0
    first = ""
    os.kill(master_pid, signal.SIGSTOP)
    try:
        for _ in range(size):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(s)
            s.settimeout(SOCKET_TIMEOUT)
            s.connect(("127.0.0.1", port))
            s.sendall(REQUEST)
            s.setblocking(False)
        before = measure()
    except OSError as exc:
        os.kill(master_pid, signal.SIGCONT)
        for s in socks:
            s.close()
        return BurstResult(0, size, f"{type(exc).__name__}: {exc}", {})
    finally:
        os.kill(master_pid, signal.SIGCONT)
    answered = 0
    try:
        open_socks = {s.fileno(): s for s in socks}
        got = dict.fromkeys(open_socks, 0)
        end = time.monotonic() + deadline
        poller = select.poll()
        for fd in open_socks:
            poller.register(fd, select.POLLIN)
        while open_socks and time.monotonic() < end:
            for fd, _ in poller.poll(100):
                s = open_socks[fd]
                try:
                    data = s.recv(256)
                except BlockingIOError:
                    continue
                except OSError as exc:
                    data = b""
                    first = first or f"{type(exc).__name__}: {exc}"
                if data:
                    got[fd] += len(data)
                    continue
                poller.unregister(fd)
                del open_socks[fd]
                if got[fd] >= ANSWER.size:
                    answered += 1
                else:
                    errors += 1
                    first = first or "a burst connection was closed without an answer"
        after = measure()
        errors += len(open_socks)
        if open_socks and not first:
            first = f"{len(open_socks)} burst connection(s) unanswered after {deadline:.0f}s"
    finally:
        for s in socks:
            s.close()
    return BurstResult(answered, errors, first, {k: after[k] - v for k, v in before.items()})
