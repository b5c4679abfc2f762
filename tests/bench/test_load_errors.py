"""The bench's load generator when the server misbehaves: errors counted, never a hang.

A bad implementation must show up as errors with a first error message in
the report. Each test runs a tiny misbehaving server (a thread of this
process on a loopback port) and checks what the client loop, the phase
runner and the burst make of it. Nothing here measures speed.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator

import psutil
import pytest

from fdpass_conformance.bench import load
from fdpass_conformance.bench.load import (
    MAX_CONSECUTIVE_ERRORS,
    ClientResult,
    _connect_loop,
    burst_phase,
    run_clients,
)
from fdpass_conformance.bench.servers import ANSWER
from fdpass_conformance.processes import fork_child

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the bench is Linux-first"),
]

Behaviour = Callable[[socket.socket], None]


class Server:
    """Accepts on a loopback port in a thread and treats every connection with ``behaviour``."""

    def __init__(self, behaviour: Behaviour) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=64)
        self.listener.settimeout(0.05)
        self.port = self.listener.getsockname()[1]
        self.behaviour = behaviour
        self.held: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except (TimeoutError, OSError):
                continue
            conn.settimeout(5)
            with contextlib.suppress(OSError):
                self.behaviour(conn)
            if conn.fileno() >= 0:
                self.held.append(conn)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self.listener.close()
        for conn in self.held:
            conn.close()


@contextlib.contextmanager
def serving(behaviour: Behaviour) -> Iterator[Server]:
    server = Server(behaviour)
    try:
        yield server
    finally:
        server.close()


def _answer(conn: socket.socket) -> bytes:
    request = conn.recv(64)
    return ANSWER.pack(os.getpid(), time.monotonic()) + request


def good(conn: socket.socket) -> None:
    conn.sendall(_answer(conn))
    conn.close()


def in_two_parts_without_echo(conn: socket.socket) -> None:
    answer = _answer(conn)
    conn.sendall(answer[:3])
    time.sleep(0.01)
    conn.sendall(answer[3 : ANSWER.size])  # no echo of the request: still an answer
    conn.close()


def answers_twice(conn: socket.socket) -> None:
    conn.sendall(_answer(conn) + b"x" * 300)  # more than one read of 256 can take
    conn.close()


def drops(conn: socket.socket) -> None:
    conn.recv(64)  # read the request: the close is a clean EOF, not a reset
    conn.close()


def resets(conn: socket.socket) -> None:
    conn.recv(64)
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    conn.close()


def holds(conn: socket.socket) -> None:
    conn.recv(64)  # and never answers; the server keeps it open


@contextlib.contextmanager
def refused_port() -> Iterator[int]:
    """A port that refuses connections: bound by us, never listening."""
    sock = socket.socket()
    try:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]
    finally:
        sock.close()


# -- the client loop -------------------------------------------------------------------


def test_a_good_server_is_counted_with_latencies() -> None:
    with serving(good) as server:
        res = _connect_loop(server.port, None, 3, True)
    assert (res.connections, res.errors, res.first_error) == (3, 0, "")
    assert len(res.latencies) == 3 and all(0 <= v < 5 for v in res.latencies)
    assert res.end >= res.start and res.cpu >= 0


def test_an_answer_in_pieces_without_the_echo_still_counts() -> None:
    with serving(in_two_parts_without_echo) as server:
        res = _connect_loop(server.port, None, 2, False)
    assert (res.connections, res.errors) == (2, 0)
    assert len(res.latencies) == 0  # not sampled


def test_more_than_one_answer_is_an_error() -> None:
    with serving(answers_twice) as server:
        res = _connect_loop(server.port, None, 2, True)
    assert (res.connections, res.errors) == (0, 2)
    assert res.first_error == "OSError: the server sent more than one answer"


def test_a_dropped_connection_is_a_short_answer() -> None:
    with serving(drops) as server:
        res = _connect_loop(server.port, None, 2, True)
    assert (res.connections, res.errors) == (0, 2)
    assert res.first_error == "OSError: short answer (0 bytes): the connection was dropped"


def test_a_client_gives_up_after_consecutive_errors() -> None:
    with refused_port() as port:
        res = _connect_loop(port, 30.0, None, True)
    assert (res.connections, res.errors) == (0, MAX_CONSECUTIVE_ERRORS)
    assert res.first_error.startswith("ConnectionRefusedError: ")


def test_a_timed_client_stops_at_its_deadline() -> None:
    with serving(good) as server:
        res = _connect_loop(server.port, 0.2, None, False)
    assert res.connections >= 1 and res.errors == 0
    assert 0.2 <= res.end - res.start < 5


# -- phases ------------------------------------------------------------------------------


def _sleeper() -> int:
    time.sleep(30)
    return 0


def _slow_client() -> ClientResult:
    time.sleep(30)
    return ClientResult()


def test_a_client_past_the_phase_deadline_is_killed_and_counted() -> None:
    with serving(good) as server:
        works: list[Callable[[], ClientResult]] = [
            functools.partial(_connect_loop, server.port, None, 2, True),
            _slow_client,
        ]
        phase = run_clients(works, deadline=1.0)
    assert phase.connections == 2
    assert phase.errors == 1
    assert phase.first_error == "1 client(s) did not finish within 1s and were killed"
    assert psutil.Process().children() == []


def test_a_client_that_dies_before_it_starts_is_an_error_not_a_hang(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """MOCK: the client body is replaced by one that exits at once (what a client killed by
    the OOM killer right after fork looks like); run_clients must fail and reap it."""
    monkeypatch.setattr(load, "_client_body", lambda *args: 3)
    before = len(os.listdir("/proc/self/fd"))
    with pytest.raises(ChildProcessError, match="a load client exited before it started"):
        run_clients([ClientResult], deadline=5.0)
    assert psutil.Process().children() == []
    assert len(os.listdir("/proc/self/fd")) == before


def test_waiting_for_clients_that_never_start_has_a_deadline() -> None:
    r, w = os.pipe()
    try:
        with pytest.raises(TimeoutError, match=r"1 load client\(s\) did not start within 0.1s"):
            load._wait_ready([r], deadline=0.1)
    finally:
        os.close(r)
        os.close(w)


# -- bursts --------------------------------------------------------------------------------


@pytest.fixture
def master_stand_in() -> Iterator[int]:
    """A process for burst_phase to SIGSTOP and SIGCONT, in place of a server's master."""
    pid = fork_child(_sleeper)
    try:
        yield pid
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def _state(pid: int) -> str:
    return psutil.Process(pid).status()


def _measure() -> dict[str, float]:
    return {"master": time.monotonic()}


def test_a_burst_that_cannot_connect_resumes_the_master(master_stand_in: int) -> None:
    with refused_port() as port:
        result = burst_phase(port, master_stand_in, 3, _measure, deadline=5)
    assert (result.connections, result.errors, result.server_cpu) == (0, 3, {})
    assert result.first_error.startswith("ConnectionRefusedError: ")
    assert _state(master_stand_in) != psutil.STATUS_STOPPED


@pytest.mark.parametrize(
    ("behaviour", "first"),
    [
        (drops, "a burst connection was closed without an answer"),
        (resets, "ConnectionResetError: "),
        (holds, "3 burst connection(s) unanswered after 1s"),
    ],
)
def test_burst_errors_are_counted_with_the_first_reason(
    master_stand_in: int, behaviour: Behaviour, first: str
) -> None:
    with serving(behaviour) as server:
        result = burst_phase(server.port, master_stand_in, 3, _measure, deadline=1.0)
    assert (result.connections, result.errors) == (0, 3)
    assert result.first_error.startswith(first), result.first_error
    assert result.server_cpu["master"] > 0
    assert _state(master_stand_in) != psutil.STATUS_STOPPED


def test_a_good_burst_is_answered(master_stand_in: int) -> None:
    with serving(good) as server:
        result = burst_phase(server.port, master_stand_in, 3, _measure, deadline=5.0)
    assert (result.connections, result.errors, result.first_error) == (3, 0, "")
