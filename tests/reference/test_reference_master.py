"""MasterProxy's properties, each with a real fork that fails if the property is removed.

The test process is the master unless a test needs to change process-wide
state (SIGPIPE disposition, RLIMIT_NOFILE, fd numbers): then a forked child
is the master, in a further IPC namespace of its own so that even a crash
leaks no queue. The whole module is ``private_ipc`` (see tests/conftest.py): the
idle-token assertions must not see a queue removed by a concurrent suite.
"""

from __future__ import annotations

import errno
import os
import resource
import signal
import socket
import time
from typing import Any

import pytest
from forkkit import (
    Lab,
    Workers,
    expect_eof,
    fd_count,
    full_fd_table,
    inode_of,
    queue_id,
    queue_last_sender,
    queue_messages,
    read_line,
    socket_inodes,
    unix_inodes,
    wait_for,
)

from reference import MasterProxy, NoLiveWorkerError
from reference import channel as ref_channel

pytestmark = [pytest.mark.timeout(30), pytest.mark.private_ipc]


def master(lab: Lab, workers: int) -> tuple[MasterProxy, socket.socket, int, int]:
    """A MasterProxy with its listener and channels: (proxy, listener, port, queue id)."""
    proxy = lab.proxy(MasterProxy)
    listener, port = lab.listen(proxy)
    proxy.open_channels(workers)
    qid = queue_id(proxy)
    assert qid is not None
    return proxy, listener, port, qid


def tokens_reach(qid: int, n: int, timeout: float = 3.0) -> bool:
    """Wait until the queue holds ``n`` idle tokens (workers waiting in accept())."""
    return wait_for(lambda: queue_messages(qid) == n, timeout)


def tokens_state(qid: int, pids: list[int]) -> str:
    """For failure messages: the queue as ipcs shows it, and what each worker is doing."""
    states = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
            with open(f"/proc/{pid}/wchan") as f:
                state += f" in {f.read()}"
        except OSError:
            state = "gone"
        states.append(f"{pid}: {state}")
    return (
        f"queue {qid}: {queue_messages(qid)} token(s), last sender {queue_last_sender(qid)}; "
        f"workers {', '.join(states)}"
    )


# -- FP-06: channel ends ---------------------------------------------------


def test_enter_worker_leaves_worker_only_its_own_channel_end(lab: Lab) -> None:
    """FP-06: after enter_worker(i), worker i holds one socket of the proxy: its own end."""
    baseline = socket_inodes()
    proxy, listener, _, _ = master(lab, 3)
    ours = socket_inodes() - baseline  # listener + 2W channel ends, all in this process
    channel_ends = ours & unix_inodes()
    assert inode_of(listener) in ours
    assert len(channel_ends) == 6, f"expected 2W=6 channel ends, found {len(channel_ends)}"
    pool = lab.workers(proxy, listener, 3)  # returns once each worker has entered
    held = {}
    for i, pid in enumerate(pool.pids):
        kept = socket_inodes(pid) & ours
        assert inode_of(listener) not in kept, f"worker {i} still holds the listener"
        assert len(kept) == 1, f"worker {i} holds {len(kept)} of the proxy's sockets, not 1"
        assert kept <= channel_ends
        held[i] = kept.pop()
    assert len(set(held.values())) == 3, "two workers share one channel end"


def test_master_holds_no_worker_end_after_first_dispatch(lab: Lab) -> None:
    """FP-06: after the first dispatch the master holds W unix sockets (its ends), not 2W."""
    baseline = socket_inodes()
    proxy, listener, port, _ = master(lab, 3)
    channel_ends = (socket_inodes() - baseline) & unix_inodes()
    assert len(channel_ends) == 6
    pool = lab.workers(proxy, listener, 3)
    worker_ends = set().union(*(socket_inodes(pid) & channel_ends for pid in pool.pids))
    assert len(worker_ends) == 3
    index, pid = lab.ask_via(proxy, listener, port)
    assert pool.pids[index] == pid
    master_now = socket_inodes() & channel_ends
    assert len(master_now) == 3, f"master holds {len(master_now)} channel ends, not W=3"
    assert not master_now & worker_ends, "master still holds a worker-side channel end"


# -- FP-07/FP-08/FP-09: dead workers ----------------------------------------


def test_dead_worker_is_skipped_and_its_connections_rerouted(lab: Lab) -> None:
    """FP-07/FP-08: SIGKILL worker 0; every later connection is served by a live worker."""
    proxy, listener, port, qid = master(lab, 3)
    pool = lab.workers(proxy, listener, 3)
    for _ in range(3):
        lab.ask_via(proxy, listener, port)
    assert tokens_reach(qid, 3), tokens_state(qid, pool.pids)
    status = pool.kill(0)  # its idle token is still queued: the next dispatch draws it
    assert status is not None and os.WIFSIGNALED(status)
    for _ in range(9):
        index, pid = lab.ask_via(proxy, listener, port)
        assert index != 0, "dispatch handed a connection to the dead worker 0"
        assert pid in pool.pids[1:]
    assert queue_messages(qid) is not None, "a killed worker removed the master's queue"


def _all_workers_dead_body(lab: Lab, channel_type: int) -> dict[str, Any]:
    """In a forked master with SIGPIPE at SIG_DFL: kill every worker, then dispatch."""
    ref_channel.CHANNEL_TYPE = socket.SocketKind(channel_type)  # this child only
    proxy = MasterProxy()
    listener = proxy.create_socket(0)
    port = listener.getsockname()[1]
    proxy.open_channels(2)
    pool = lab.workers(proxy, listener, 2)
    out: dict[str, Any] = {}
    try:
        index, pid = lab.ask_via(proxy, listener, port)
        out["first"] = pool.pids[index] == pid
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
        for i in range(2):
            pool.kill(i)
        attempts = []
        for _ in range(2):
            conn = lab.connect(port, b"ping")
            t0 = time.monotonic()
            try:
                got = proxy.dispatch(listener, timeout=3.0)
                outcome: dict[str, Any] = {"returned": got}
            except Exception as exc:
                outcome = {
                    "type": type(exc).__name__,
                    "oserror": isinstance(exc, OSError),
                    "no_live": isinstance(exc, NoLiveWorkerError),
                    "errno": getattr(exc, "errno", None),
                    "message": str(exc),
                }
            outcome["seconds"] = time.monotonic() - t0
            outcome["client"] = expect_eof(conn, timeout=2.0)
            conn.close()
            attempts.append(outcome)
        out["attempts"] = attempts
        proxy.close()
    finally:
        pool.stop()
    return out


@pytest.mark.parametrize(
    "channel_type",
    [ref_channel.CHANNEL_TYPE, socket.SOCK_STREAM],
    ids=["native-channel", "stream-channel"],
)
def test_all_workers_dead_dispatch_raises_client_eof_master_survives_sigpipe(
    lab: Lab, channel_type: int
) -> None:
    """FP-09/FP-08: no live worker -> NoLiveWorkerError (an OSError), client EOF/reset, no SIGPIPE.

    The stream-channel case forces the SOCK_STREAM channel (the macOS path) on
    Linux: there a send to a closed peer raises SIGPIPE unless MSG_NOSIGNAL is used.
    """
    done = lab.run_in_child(lambda note: _all_workers_dead_body(lab, channel_type), new_ipc_ns=True)
    assert done.killed_by is None, (
        f"the master died of signal {done.killed_by} (SIGPIPE is {int(signal.SIGPIPE)})"
    )
    assert done.error is None, done.error
    assert done.exit_code == 0
    out = done.result
    assert out["first"] is True
    for attempt in out["attempts"]:
        assert "returned" not in attempt, f"dispatch returned {attempt} with every worker dead"
        assert attempt["oserror"] and attempt["no_live"], attempt
        assert attempt["errno"] is not None
        assert "dispatch" in attempt["message"]
        assert attempt["seconds"] < 3.0
        assert attempt["client"] in ("eof", "reset"), f"client saw {attempt['client']}"


# -- FP-12: idle first ---------------------------------------------------------


def test_idle_first_dispatch_skips_busy_worker(lab: Lab) -> None:
    """FP-12: while one worker holds a connection open, new connections go to idle workers."""
    proxy, listener, port, qid = master(lab, 3)
    pool = lab.workers(proxy, listener, 3)
    assert tokens_reach(qid, 3), tokens_state(qid, pool.pids)
    with lab.connect(port, b"hold") as hold:
        busy = proxy.dispatch(listener, timeout=5.0)
        assert int(read_line(hold)) == pool.pids[busy]
        for _ in range(8):
            assert tokens_reach(qid, 2), tokens_state(qid, pool.pids)
            index, pid = lab.ask_via(proxy, listener, port)
            assert index != busy, f"connection dispatched to worker {busy}, busy holding one"
            assert pid != pool.pids[busy]


def test_idle_first_ignores_stale_token_of_worker_busy_after_round_robin(lab: Lab) -> None:
    """FP-12: a worker that got a round-robin connection is busy, whatever token it posted.

    Both workers hold a connection (no idle token left), so the third goes
    round-robin to worker x and waits in its channel. x is released: it posts
    an idle token, then receives that third connection and holds it. y is
    released and posts its token. Now x is busy and y idle: the next
    connection must go to y.
    """
    proxy, listener, port, qid, pool, holds = _both_workers_holding(lab)
    assert sorted(holds) == [0, 1], "both idle workers should have been chosen by token"
    assert queue_messages(qid) == 0
    third = lab.connect(port, b"hold")
    x = proxy.dispatch(listener, timeout=5.0)  # no token: round-robin
    y = 1 - x
    holds.pop(x).close()  # x finishes, posts its token, then takes `third` and holds it
    assert int(read_line(third)) == pool.pids[x]
    holds.pop(y).close()  # y finishes and posts its token: y is the only idle worker
    assert wait_for(lambda: queue_last_sender(qid) == pool.pids[y], 3.0), "y never went idle"
    with lab.connect(port, b"ping") as fourth:
        chosen = proxy.dispatch(listener, timeout=5.0)
        assert chosen == y, (
            f"dispatch chose worker {chosen}, busy holding a connection, over idle worker {y}: "
            f"{x} posted its idle token before it received a round-robin connection, and that "
            f"stale token stayed first in the queue ({queue_messages(qid)} token(s) left)"
        )
        assert int(read_line(fourth)) == pool.pids[y]
    third.close()


def test_worker_with_a_connection_queued_posts_no_idle_token(lab: Lab) -> None:
    """A worker back in accept with a connection already queued takes it without a token.

    Such a token would be stale at once: the master would read it and drop it,
    a msgsnd and a msgrcv per connection for nothing (docs/performance.md).
    """
    proxy, listener, port, qid, pool, holds = _both_workers_holding(lab)
    assert queue_messages(qid) == 0
    third = lab.connect(port, b"hold")
    x = proxy.dispatch(listener, timeout=5.0)  # no token: round-robin, queued in x's channel
    holds.pop(x).close()  # x finishes and finds `third` queued
    assert int(read_line(third)) == pool.pids[x]
    assert queue_messages(qid) == 0, f"worker {x} posted a token with a connection queued"
    third.close()
    for conn in holds.values():
        conn.close()


# -- FP-10/FP-11: timeout and shutdown --------------------------------------------


@pytest.mark.timeout(10)
def test_dispatch_timeout_raises_timeouterror_and_leaks_no_fd(lab: Lab) -> None:
    """FP-10: dispatch(timeout=0.2), no client: TimeoutError after ~0.2 s, no fd leaked."""
    proxy, listener, port, _ = master(lab, 1)
    pool = lab.workers(proxy, listener, 1)
    lab.ask_via(proxy, listener, port)
    before = fd_count()
    for _ in range(3):
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            proxy.dispatch(listener, timeout=0.2)
        elapsed = time.monotonic() - t0
        assert 0.1 <= elapsed < 2.0, f"dispatch(timeout=0.2) gave up after {elapsed:.3f}s"
    assert fd_count() == before, "a timed-out dispatch leaked an fd"
    index, pid = lab.ask_via(proxy, listener, port)  # and it still works afterwards
    assert pid == pool.pids[index]


@pytest.mark.timeout(10)
def test_worker_blocked_in_accept_gets_eoferror_after_master_close(lab: Lab) -> None:
    """FP-11: after the master's close(), every worker blocked in accept() gets EOFError in 1 s."""
    proxy, listener, port, qid = master(lab, 3)
    pool = lab.workers(proxy, listener, 3)
    lab.ask_via(proxy, listener, port)
    assert tokens_reach(qid, 3), tokens_state(qid, pool.pids)
    t0 = time.monotonic()
    proxy.close()
    exited = pool.wait_all(timeout=1.0)
    elapsed = time.monotonic() - t0
    assert len(exited) == 3, f"{3 - len(exited)} worker(s) still blocked {elapsed:.2f}s after close"
    for pid, status in exited.items():
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, (
            f"worker {pid} did not leave through EOFError (status {status})"
        )


# -- FP-14 and fd numbers --------------------------------------------------------


def test_worker_readvertises_idle_after_fd_table_full(lab: Lab) -> None:
    """FP-14/FP-12: a worker whose fd table was full drops that connection (client EOF),
    raises EMFILE from accept(), and once fds are free it is advertised as idle again."""
    proxy, listener, port, qid = master(lab, 1)
    rfd, wfd = os.pipe()

    def worker() -> None:
        os.close(rfd)
        proxy.enter_worker(0)
        code = "no error"
        with full_fd_table(free=0):
            try:
                proxy.accept(listener).close()
            except OSError as exc:
                code = errno.errorcode.get(exc.errno or 0, str(exc.errno))
        os.write(wfd, code.encode() + b"\n")
        while True:
            try:
                conn = proxy.accept(listener)
            except EOFError:
                return
            with conn:
                conn.recv(64)
                conn.sendall(f"{os.getpid()}\n".encode())

    pid = lab.fork(worker)
    os.close(wfd)
    try:
        assert tokens_reach(qid, 1), tokens_state(qid, [pid])
        with lab.connect(port, b"ping") as dropped:
            assert proxy.dispatch(listener, timeout=5.0) == 0
            assert expect_eof(dropped, timeout=3.0) in ("eof", "reset")
        with os.fdopen(rfd, "rb") as report:
            rfd = -1
            assert report.readline().strip() == b"EMFILE"
        readvertised = tokens_reach(qid, 1, timeout=2.0)
        _, served_by = lab.ask_via(proxy, listener, port)  # served either way
        assert served_by == pid
        assert readvertised, (
            "after accept() raised EMFILE for a token-dispatched connection, the worker never "
            "posted an idle token again: its token was consumed but _token_out stayed True"
        )
    finally:
        if rfd >= 0:
            os.close(rfd)


def _push_fd_numbers_past_fd_setsize() -> str | None:
    """In a forked child: occupy fds up to 1100, so that new fds are numbered above 1024."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < 2048:
        return f"RLIMIT_NOFILE hard limit {hard} < 2048"
    resource.setrlimit(resource.RLIMIT_NOFILE, (2048, hard))
    fillers: list[int] = []
    while not fillers or fillers[-1] < 1100:
        fillers.append(os.open("/dev/null", os.O_RDONLY))
    return None


def _high_fd_body(lab: Lab) -> dict[str, Any]:
    reason = _push_fd_numbers_past_fd_setsize()
    if reason is not None:
        return {"skip": reason}
    proxy = MasterProxy()
    listener = proxy.create_socket(0)
    port = listener.getsockname()[1]
    proxy.open_channels(1)
    pool = lab.workers(proxy, listener, 1)
    try:
        with lab.connect(port, b"ping") as conn:
            try:
                index = proxy.dispatch(listener, timeout=2.0)
            except Exception as exc:
                return {"listener_fd": listener.fileno(), "error": f"{type(exc).__name__}: {exc}"}
            return {
                "listener_fd": listener.fileno(),
                "index": index,
                "served": int(read_line(conn)) == pool.pids[index],
            }
    finally:
        proxy.close()
        pool.stop(grace=1.0)


def test_dispatch_with_timeout_works_when_fd_numbers_exceed_fd_setsize(lab: Lab) -> None:
    """FP-10: dispatch(timeout=...) must not depend on fd numbers below FD_SETSIZE (1024).

    A master with many open fds gets a listener numbered above 1024; dispatch
    must still accept and pass the connection (select.select() cannot watch it).
    """
    done = lab.run_in_child(lambda note: _high_fd_body(lab), new_ipc_ns=True)
    assert done.error is None, done.error
    out = done.result
    if "skip" in out:
        pytest.skip(out["skip"])
    assert out["listener_fd"] >= 1024
    assert "error" not in out, f"dispatch with listener fd {out['listener_fd']}: {out['error']}"
    assert out["served"] is True


def _full_channel_body(lab: Lab, high_fds: bool) -> dict[str, Any]:
    """One worker holds a connection; dispatch until its channel is full."""
    if high_fds:
        reason = _push_fd_numbers_past_fd_setsize()
        if reason is not None:
            return {"skip": reason}
    proxy = MasterProxy()
    listener = proxy.create_socket(0)
    port = listener.getsockname()[1]
    proxy.open_channels(1)
    pool = lab.workers(proxy, listener, 1)
    out: dict[str, Any] = {"listener_fd": listener.fileno(), "queued": 0}
    try:
        hold = lab.connect(port, b"hold")
        proxy.dispatch(listener, timeout=2.0)
        read_line(hold)  # worker 0 is busy until `hold` closes
        for _ in range(600):  # a socketpair holds ~280 one-fd messages on Linux
            conn = lab.connect(port, b"ping")
            t0 = time.monotonic()
            try:
                proxy.dispatch(listener, timeout=0.5)
            except Exception as exc:
                out["seconds"] = time.monotonic() - t0
                out["raised"] = f"{type(exc).__name__}: {exc}"
                out["timeout"] = isinstance(exc, TimeoutError)
                out["client"] = expect_eof(conn, timeout=2.0)
                break
            out["queued"] += 1  # it waits in the channel for the busy worker
        return out
    finally:
        proxy.close()
        pool.stop(grace=1.0)


@pytest.mark.parametrize("high_fds", [False, True], ids=["fds-below-1024", "fds-above-1024"])
def test_dispatch_full_channel_times_out_within_timeout(lab: Lab, high_fds: bool) -> None:
    """IPC-08/FLT-01: when every live worker's channel is full, dispatch(timeout) raises
    TimeoutError about then (not blocks, not a ValueError from select() on fds past
    FD_SETSIZE) and the client sees EOF, not a hang."""
    done = lab.run_in_child(lambda note: _full_channel_body(lab, high_fds), new_ipc_ns=True)
    assert done.error is None, done.error
    out = done.result
    if "skip" in out:
        pytest.skip(out["skip"])
    assert "raised" in out, f"dispatch never reported a full channel ({out['queued']} queued)"
    assert out["timeout"], (
        f"listener fd {out['listener_fd']}, after {out['queued']} queued: {out['raised']}"
    )
    assert out["seconds"] < 2.0
    assert out["client"] in ("eof", "reset"), f"the refused client saw {out['client']}"


def _both_workers_holding(
    lab: Lab,
) -> tuple[MasterProxy, socket.socket, int, int, Workers, dict[int, socket.socket]]:
    """Two workers, each chosen by its idle token and now holding a connection: no token left."""
    proxy, listener, port, qid = master(lab, 2)
    pool = lab.workers(proxy, listener, 2)
    assert tokens_reach(qid, 2), tokens_state(qid, pool.pids)
    holds: dict[int, socket.socket] = {}
    for _ in range(2):
        conn = lab.connect(port, b"hold")
        index = proxy.dispatch(listener, timeout=5.0)
        assert int(read_line(conn)) == pool.pids[index]
        holds[index] = conn
    return proxy, listener, port, qid, pool, holds
