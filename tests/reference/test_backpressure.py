"""MasterProxy's backpressure: a bounded FIFO in the master and an overflow policy.

Real forks throughout (``forkkit.Lab``): the test process is the master,
workers are forked children that answer ``<pid>\\n`` and keep a ``hold``
connection open until the client closes it, or are frozen with SIGSTOP.
Each test checks what a client sees (an answer, the 503 reply, EOF; never
a hang: every read has a deadline) and that the master's fd count comes back
to where it was. No test asserts a duration.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
from collections.abc import Callable, Iterator

import pytest
from forkkit import Lab, Workers, expect_eof, fd_count, read_line, wait_for

from reference import MasterProxy, NoLiveWorkerError

pytestmark = pytest.mark.timeout(60)

REPLY_503 = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


def bounded(
    max_pending: int,
    on_overflow: Callable[[socket.socket], object] | None = None,
    max_inflight: int = 1,
) -> type[MasterProxy]:
    """A zero-argument MasterProxy class with these settings (what ``lab.proxy`` takes)."""

    class Bounded(MasterProxy):
        def __init__(self) -> None:
            super().__init__(
                max_pending=max_pending, on_overflow=on_overflow, max_inflight=max_inflight
            )

    return Bounded


def send_503(conn: socket.socket) -> None:
    conn.sendall(REPLY_503)


def setup(
    lab: Lab, cls: type[MasterProxy], workers: int = 2
) -> tuple[MasterProxy, socket.socket, int, Workers]:
    proxy = lab.proxy(cls)
    listener, port = lab.listen(proxy)
    proxy.open_channels(workers)
    pool = lab.workers(proxy, listener, workers)
    # The first dispatch seals the channels (closes the worker ends here): fd counts
    # taken after this one compare like with like.
    assert try_dispatch(proxy, listener, 0.01) is None
    return proxy, listener, port, pool


def hold_every_worker(
    lab: Lab, proxy: MasterProxy, listener: socket.socket, port: int, pool: Workers
) -> dict[int, socket.socket]:
    """One ``hold`` connection per worker, each answered: every worker is busy."""
    held: dict[int, socket.socket] = {}
    for _ in pool.pids:
        conn = lab.connect(port, b"hold")
        index = proxy.dispatch(listener, timeout=5.0)
        assert int(read_line(conn)) == pool.pids[index]
        held[index] = conn
    assert sorted(held) == list(range(len(pool.pids))), "each worker should hold one"
    return held


def read_all(conn: socket.socket, timeout: float = 5.0) -> tuple[bytes, str]:
    """Everything the server sends until it closes, and how it ended (eof/reset/hang)."""
    conn.settimeout(timeout)
    data = b""
    try:
        while chunk := conn.recv(4096):
            data += chunk
    except ConnectionResetError:
        return data, "reset"
    except TimeoutError:
        return data, "hang"
    return data, "eof"


def drain_pending(proxy: MasterProxy, listener: socket.socket) -> list[int]:
    """Dispatch until nothing waits any more; the indices handed out."""
    got: list[int] = []
    while proxy.pending:
        got.append(proxy.dispatch(listener, timeout=5.0))
    return got


def try_dispatch(proxy: MasterProxy, listener: socket.socket, timeout: float) -> int | None:
    try:
        return proxy.dispatch(listener, timeout=timeout)
    except TimeoutError:
        return None


@pytest.fixture
def continue_stopped() -> Iterator[list[int]]:
    """Pids a test SIGSTOPs; they are continued at teardown (then killed by the lab)."""
    stopped: list[int] = []
    yield stopped
    for pid in stopped:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


# -- the overflow policies ----------------------------------------------------


def test_overflow_default_closes_newest_with_eof_and_pending_are_served_later(lab: Lab) -> None:
    proxy, listener, port, pool = setup(lab, bounded(max_pending=2))
    baseline = fd_count()
    held = hold_every_worker(lab, proxy, listener, port, pool)
    clients = [lab.connect(port, b"ping") for _ in range(6)]
    assert try_dispatch(proxy, listener, 0.5) is None, "no worker is free: nothing to hand out"
    assert proxy.pending == 2
    assert proxy.overflowed == 4
    for conn in clients[2:]:
        data, end = read_all(conn)
        assert (data, end) == (b"", "eof"), f"a rejected client saw {data!r} and {end}"
    for conn in clients[:2]:  # waiting in the master: no answer, no EOF
        assert expect_eof(conn, timeout=0.2) == "hang"
    for conn in held.values():
        conn.close()
    handed = drain_pending(proxy, listener)
    assert len(handed) == 2
    for conn, index in zip(clients[:2], handed, strict=True):
        assert int(read_line(conn)) == pool.pids[index]
        assert expect_eof(conn) == "eof"
    for conn in clients:
        conn.close()
    assert wait_for(lambda: fd_count() == baseline, 3.0), "the master's fd count did not return"


def test_overflow_callback_reply_reaches_the_client_before_eof(lab: Lab) -> None:
    proxy, listener, port, pool = setup(lab, bounded(max_pending=1, on_overflow=send_503))
    baseline = fd_count()
    held = hold_every_worker(lab, proxy, listener, port, pool)
    waiting = lab.connect(port, b"GET / HTTP/1.1\r\n\r\n")
    rejected = [lab.connect(port, b"GET / HTTP/1.1\r\n\r\n") for _ in range(5)]
    assert try_dispatch(proxy, listener, 0.5) is None
    assert (proxy.pending, proxy.overflowed) == (1, 5)
    for conn in rejected:
        assert read_all(conn) == (REPLY_503, "eof")
    for conn in held.values():
        conn.close()
    index = proxy.dispatch(listener, timeout=5.0)
    assert int(read_line(waiting)) == pool.pids[index]
    for conn in (waiting, *rejected):
        conn.close()
    assert wait_for(lambda: fd_count() == baseline, 3.0), "the master's fd count did not return"


def test_overflow_with_zero_pending_rejects_at_once_when_every_worker_is_busy(lab: Lab) -> None:
    proxy, listener, port, pool = setup(lab, bounded(max_pending=0, on_overflow=send_503))
    held = hold_every_worker(lab, proxy, listener, port, pool)
    conn = lab.connect(port, b"ping")
    assert try_dispatch(proxy, listener, 0.5) is None
    assert read_all(conn) == (REPLY_503, "eof")
    assert proxy.pending == 0
    held[0].close()
    # Worker 0 reports idle once it is back in accept(); until then a newcomer is rejected
    # (nothing may wait). Retrying until one is served shows that the freed worker is used.
    outcomes: list[bytes] = []

    def served() -> bool:
        with lab.connect(port, b"ping") as conn:
            index = try_dispatch(proxy, listener, 0.2)
            data, _ = read_all(conn)
        outcomes.append(data)
        return index == 0 and data == f"{pool.pids[0]}\n".encode()

    assert wait_for(served, 10.0, interval=0.01), f"never served after the release: {outcomes}"
    assert set(outcomes[:-1]) <= {REPLY_503}


def test_callback_error_is_raised_after_the_connection_is_closed(lab: Lab) -> None:
    def broken(conn: socket.socket) -> None:
        raise RuntimeError("bug in the overflow handler")

    proxy, listener, port, pool = setup(lab, bounded(max_pending=0, on_overflow=broken))
    baseline = fd_count()
    held = hold_every_worker(lab, proxy, listener, port, pool)
    conn = lab.connect(port, b"ping")
    with pytest.raises(RuntimeError, match="overflow handler"):
        proxy.dispatch(listener, timeout=2.0)
    assert read_all(conn) == (b"", "eof")
    for c in (conn, *held.values()):
        c.close()
    assert wait_for(lambda: fd_count() == baseline, 3.0)


def test_callback_oserror_is_ignored_and_the_client_still_gets_eof(lab: Lab) -> None:
    def failing(conn: socket.socket) -> None:
        raise OSError(errno.EPIPE, "the client went away")

    proxy, listener, port, pool = setup(lab, bounded(max_pending=0, on_overflow=failing))
    hold_every_worker(lab, proxy, listener, port, pool)
    conn = lab.connect(port, b"ping")
    assert try_dispatch(proxy, listener, 0.5) is None
    assert proxy.overflowed == 1
    assert read_all(conn) == (b"", "eof")


# -- frozen workers: nothing hangs for good -----------------------------------------


def test_sigstopped_workers_clients_get_503_or_are_served_after_sigcont(
    lab: Lab, continue_stopped: list[int]
) -> None:
    proxy, listener, port, pool = setup(lab, bounded(max_pending=3, on_overflow=send_503))
    baseline = fd_count()
    for pid in pool.pids:
        os.kill(pid, signal.SIGSTOP)
        continue_stopped.append(pid)
    clients = [lab.connect(port, b"ping") for _ in range(10)]
    handed = [proxy.dispatch(listener, timeout=5.0) for _ in pool.pids]
    assert sorted(handed) == [0, 1], "the first connections go to the (frozen) idle workers"
    assert try_dispatch(proxy, listener, 0.5) is None, "frozen workers: nothing more to hand out"
    assert proxy.pending == 3
    assert proxy.overflowed == 5
    for conn in clients[5:]:
        assert read_all(conn) == (REPLY_503, "eof")
    for pid in pool.pids:
        os.kill(pid, signal.SIGCONT)
    handed += drain_pending(proxy, listener)
    assert len(handed) == 5
    served = {int(read_line(conn)) for conn in clients[:5]}
    assert served <= set(pool.pids)
    for conn in clients:
        conn.close()
    assert wait_for(lambda: fd_count() == baseline, 3.0), "the master's fd count did not return"


def test_waiting_connection_goes_to_whichever_worker_frees_first(lab: Lab) -> None:
    """No connection waits behind a busy worker while another one is free (max_inflight=1)."""
    proxy, listener, port, pool = setup(lab, bounded(max_pending=4))
    held = hold_every_worker(lab, proxy, listener, port, pool)
    waiting = lab.connect(port, b"ping")
    assert try_dispatch(proxy, listener, 0.3) is None
    held[1].close()
    assert proxy.dispatch(listener, timeout=5.0) == 1
    assert int(read_line(waiting)) == pool.pids[1]


def test_max_inflight_lets_a_busy_worker_queue_that_many(lab: Lab) -> None:
    proxy, listener, port, pool = setup(lab, bounded(max_pending=1, max_inflight=2), workers=1)
    held = hold_every_worker(lab, proxy, listener, port, pool)
    queued = lab.connect(port, b"ping")
    assert proxy.dispatch(listener, timeout=5.0) == 0, "a second one fits in worker 0's channel"
    waiting = lab.connect(port, b"ping")
    rejected = lab.connect(port, b"ping")
    assert try_dispatch(proxy, listener, 0.5) is None
    assert (proxy.pending, proxy.overflowed) == (1, 1)
    assert read_all(rejected) == (b"", "eof")
    held[0].close()
    assert int(read_line(queued)) == pool.pids[0]
    assert proxy.dispatch(listener, timeout=5.0) == 0
    assert int(read_line(waiting)) == pool.pids[0]


# -- the contract still holds ------------------------------------------------------


def test_dispatch_returns_the_receiving_worker_and_keeps_no_fd_of_that_connection(
    lab: Lab,
) -> None:
    """FP-03/FP-04 with a waiting connection handed over by a later dispatch."""
    proxy, listener, port, pool = setup(lab, bounded(max_pending=4))
    held = hold_every_worker(lab, proxy, listener, port, pool)
    waiting = lab.connect(port, b"ping")
    assert try_dispatch(proxy, listener, 0.3) is None
    held[0].close()
    with_waiting = fd_count()
    index = proxy.dispatch(listener, timeout=5.0)
    assert fd_count() == with_waiting - 1, "the master still holds the handed-over connection"
    assert int(read_line(waiting)) == pool.pids[index]
    assert expect_eof(waiting) == "eof"


def test_all_workers_dead_closes_waiting_connections_and_raises(lab: Lab) -> None:
    proxy, listener, port, pool = setup(lab, bounded(max_pending=4))
    baseline = fd_count()
    hold_every_worker(lab, proxy, listener, port, pool)
    waiting = [lab.connect(port, b"ping") for _ in range(2)]
    assert try_dispatch(proxy, listener, 0.3) is None
    assert proxy.pending == 2
    for i in range(len(pool.pids)):
        pool.kill(i)
    with pytest.raises(NoLiveWorkerError) as info:
        proxy.dispatch(listener, timeout=5.0)
    assert "dispatch" in str(info.value)
    assert proxy.pending == 0
    for conn in waiting:
        assert read_all(conn)[1] in ("eof", "reset")
        conn.close()
    held_fds = len(pool.pids)  # the test's own hold client sockets stay open until teardown
    assert wait_for(lambda: fd_count() == baseline + held_fds, 3.0)


def test_close_closes_waiting_connections(lab: Lab) -> None:
    proxy, listener, port, pool = setup(lab, bounded(max_pending=4))
    held = hold_every_worker(lab, proxy, listener, port, pool)
    waiting = [lab.connect(port, b"ping") for _ in range(3)]
    assert try_dispatch(proxy, listener, 0.3) is None
    assert proxy.pending == 3
    proxy.close()
    assert proxy.pending == 0
    for conn in waiting:
        assert read_all(conn)[1] in ("eof", "reset")
    for conn in held.values():
        conn.close()
    assert len(pool.wait_all(timeout=3.0)) == len(pool.pids), "workers did not see EOF"


def test_unbounded_default_is_unchanged_connections_queue_in_busy_channels(lab: Lab) -> None:
    proxy, listener, port, pool = setup(lab, MasterProxy)
    held = hold_every_worker(lab, proxy, listener, port, pool)
    queued = [lab.connect(port, b"ping") for _ in range(4)]
    for _ in queued:
        assert proxy.dispatch(listener, timeout=5.0) in (0, 1)
    assert proxy.pending == 0 and proxy.overflowed == 0
    for conn in held.values():
        conn.close()
    for conn in queued:
        assert int(read_line(conn)) in pool.pids


# -- construction -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"max_pending": -1}, ValueError),
        ({"max_pending": "8"}, TypeError),
        ({"max_pending": True}, TypeError),
        ({"max_pending": 4, "max_inflight": 0}, ValueError),
        ({"max_pending": 4, "max_inflight": 1.5}, TypeError),
        ({"max_pending": 4, "on_overflow": "503"}, TypeError),
        ({"on_overflow": send_503}, ValueError),
    ],
)
def test_invalid_settings_are_rejected_before_anything_is_acquired(
    kwargs: dict[str, object], error: type[Exception]
) -> None:
    before = fd_count()
    with pytest.raises(error):
        MasterProxy(**kwargs)  # type: ignore[arg-type]
    assert fd_count() == before
