"""MasterProxy's System V queue, observed with the real ``ipcs``.

Other tests may create queues on this machine at the same time, so every
check is about queue ids this test created; checks of the form "no queue was
created" run in a forked child inside a new IPC namespace, where ``ipcs``
lists only that child's objects. The lifecycle tests (created, removed by
close(), kept by a child's close(), removed after a failed open_channels) run
in the machine's own IPC namespace; the two that serve for a while are
``private_ipc`` (see tests/conftest.py).
"""

from __future__ import annotations

import errno
import os
import socket
import subprocess
from typing import Any

import pytest
from forkkit import (
    Lab,
    Note,
    fd_count,
    full_fd_table,
    ipcs_queues,
    queue_id,
    queue_messages,
    wait_for,
)

from fdpass_conformance.reference.tokens import TOKEN_MTYPE, TokenQueue
from fdpass_conformance.sysv import msgrm
from reference import MasterProxy

pytestmark = pytest.mark.timeout(30)


def test_queue_created_by_create_socket_private_mode_600(lab: Lab) -> None:
    """IPC-04/IPC-05: create_socket makes a private queue (key 0x00000000), perms 600."""
    before = ipcs_queues()
    proxy = lab.proxy(MasterProxy)
    lab.listen(proxy)
    qid = queue_id(proxy)
    assert qid is not None
    rows = ipcs_queues()
    assert qid in rows, f"queue {qid} is not listed by ipcs -q"
    assert qid not in before
    assert rows[qid].key == "0x00000000", f"queue key {rows[qid].key} is not IPC_PRIVATE"
    assert rows[qid].perms == "600", f"queue perms {rows[qid].perms}, expected 600"


def test_queue_removed_by_close_and_close_idempotent(lab: Lab) -> None:
    """IPC-02/SP-12: the master's close() removes the queue; a second close() is harmless."""
    proxy = lab.proxy(MasterProxy)
    lab.listen(proxy)
    proxy.open_channels(2)
    qid = queue_id(proxy)
    assert qid is not None and qid in ipcs_queues()
    proxy.close()
    assert qid not in ipcs_queues(), "close() left the queue behind"
    proxy.close()


def _open_channels_emfile_body(note: Note) -> dict[str, Any]:
    proxy = MasterProxy()
    proxy.create_socket(0)
    qid = queue_id(proxy)
    note("qid", qid)
    out: dict[str, Any] = {"qid": qid}
    with full_fd_table(free=3):  # room for worker 0's pair, not for worker 1's
        out["fds_before"] = fd_count()
        try:
            proxy.open_channels(4)
            out["raised"] = None
        except OSError as exc:
            # Counted while the exception (and every frame it references) is alive:
            # a socket that was merely dropped, not closed, is still open here.
            out["fds_after"] = fd_count()
            out["raised"] = type(exc).__name__
            out["errno"] = exc.errno
            out["message"] = str(exc)
    # No close(): whatever is still listed now, open_channels left behind.
    out["listed_in_child"] = qid in ipcs_queues()
    return out


def test_queue_removed_when_open_channels_fails_midway_emfile(lab: Lab) -> None:
    """IPC-03/FLT-04: socketpair fails with EMFILE for worker 1 -> OSError(EMFILE) naming
    open_channels, worker 0's pair closed, queue removed (seen by ipcs in child and parent)."""
    done = lab.run_in_child(_open_channels_emfile_body)
    assert done.error is None, done.error
    out = done.result
    assert out["raised"] is not None, "open_channels succeeded with no fd left for worker 1"
    assert out["errno"] == errno.EMFILE, out
    assert "open_channels" in out["message"], out["message"]
    assert out["fds_after"] == out["fds_before"], "the pair opened before the failure leaked"
    assert out["listed_in_child"] is False, "the failed open_channels left its queue"
    assert out["qid"] not in ipcs_queues()


def _enospc_body(note: Note) -> dict[str, Any]:
    with open("/proc/sys/kernel/msgmni", "w") as f:
        f.write("0\n")
    proxy = MasterProxy()
    before = fd_count()
    out: dict[str, Any] = {}
    try:
        proxy.create_socket(0)
        out["raised"] = None
    except OSError as exc:
        out["fd_leak"] = fd_count() - before  # while the exception's frames are alive
        out["raised"] = type(exc).__name__
        out["errno"] = exc.errno
        out["message"] = str(exc)
    out["queues"] = sorted(ipcs_queues())
    proxy.close()
    return out


def test_queue_creation_enospc_raises_and_closes_listener(lab: Lab) -> None:
    """IPC-06: msgget fails with ENOSPC -> create_socket raises OSError(ENOSPC) naming
    create_socket, and the listener it had opened is closed (fd count flat)."""
    done = lab.run_in_child(_enospc_body, new_ipc_ns=True)
    assert done.error is None, done.error
    out = done.result
    assert out["raised"] is not None, "create_socket succeeded with msgmni=0"
    assert out["errno"] == errno.ENOSPC, out
    assert "create_socket" in out["message"], out["message"]
    assert out["fd_leak"] == 0, "the listener leaked when queue creation failed"
    assert out["queues"] == []


def _port_in_use_body(note: Note) -> dict[str, Any]:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    proxy = MasterProxy()
    before = fd_count()
    out: dict[str, Any] = {}
    try:
        proxy.create_socket(port)
        out["raised"] = None
    except OSError as exc:
        out["fd_leak"] = fd_count() - before  # while the exception's frames are alive
        out["errno"] = exc.errno
        out["message"] = str(exc)
        out["raised"] = type(exc).__name__
    out["queues"] = sorted(ipcs_queues())
    proxy.close()
    holder.close()
    return out


def test_port_in_use_creates_no_queue(lab: Lab) -> None:
    """IPC-03/SP-08: create_socket failing before the queue (EADDRINUSE): no queue, no fd."""
    done = lab.run_in_child(_port_in_use_body, new_ipc_ns=True)
    assert done.error is None, done.error
    out = done.result
    assert out["raised"] is not None
    assert out["errno"] == errno.EADDRINUSE, out
    assert "create_socket" in out["message"]
    assert out["fd_leak"] == 0
    assert out["queues"] == [], f"failed create_socket left queues {out['queues']}"


@pytest.mark.private_ipc
def test_two_instances_distinct_queues_and_isolated(lab: Lab) -> None:
    """FP-13/IPC-04: two proxies in one process: distinct queues, no connection crosses over."""
    a = lab.proxy(MasterProxy)
    la, port_a = lab.listen(a)
    a.open_channels(2)
    b = lab.proxy(MasterProxy)
    lb, port_b = lab.listen(b)
    b.open_channels(2)
    qa, qb = queue_id(a), queue_id(b)
    assert qa is not None and qb is not None
    assert qa != qb, "both instances share one queue"
    listed = ipcs_queues()
    assert qa in listed and qb in listed
    # Each instance's workers drop the other instance in the child (close() of a
    # non-creator releases its fds and never touches the queue).
    workers_a = lab.workers(a, la, 2, also_close=[b])
    workers_b = lab.workers(b, lb, 2, also_close=[a])
    for _ in range(6):
        ia, pa = lab.ask_via(a, la, port_a)
        ib, pb = lab.ask_via(b, lb, port_b)
        assert pa == workers_a.pids[ia] and pb == workers_b.pids[ib]
    # Each queue carries only its own workers' idle tokens.
    assert wait_for(lambda: queue_messages(qa) == 2 and queue_messages(qb) == 2, 3.0), (
        f"tokens: A {queue_messages(qa)}, B {queue_messages(qb)}; expected 2 each"
    )
    assert qa in ipcs_queues() and qb in ipcs_queues()


def test_forked_child_close_or_exit_keeps_parent_queue(lab: Lab) -> None:
    """FP-07: a forked child that calls close() and exits, or just exits, leaves the queue."""
    proxy = lab.proxy(MasterProxy)
    listener, port = lab.listen(proxy)
    proxy.open_channels(1)
    qid = queue_id(proxy)
    assert qid is not None
    status = lab.wait(lab.fork(proxy.close))
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    assert qid in ipcs_queues(), "a forked child's close() removed the parent's queue"

    def exit_only() -> None:
        pass

    status = lab.wait(lab.fork(exit_only))
    assert os.WIFEXITED(status)
    assert qid in ipcs_queues(), "a forked child's exit removed the parent's queue"
    # The master still works with its queue: a worker advertises itself through it.
    pool = lab.workers(proxy, listener, 1)
    index, pid = lab.ask_via(proxy, listener, port)
    assert pid == pool.pids[index]
    assert wait_for(lambda: queue_messages(qid) == 1, 3.0)


def test_worker_close_keeps_queue(lab: Lab) -> None:
    """FP-07/contract close(): a worker's close() releases its end, never the queue."""
    proxy = lab.proxy(MasterProxy)
    lab.listen(proxy)
    proxy.open_channels(2)
    qid = queue_id(proxy)
    assert qid is not None

    def worker_then_close() -> None:
        proxy.enter_worker(1)
        proxy.close()
        proxy.close()

    status = lab.wait(lab.fork(worker_then_close))
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    assert qid in ipcs_queues(), "a worker's close() removed the master's queue"


@pytest.mark.private_ipc
def test_queue_removed_from_outside_dispatch_keeps_serving(lab: Lab) -> None:
    """IPC-07: `ipcrm -q ID` while serving: dispatch keeps serving, workers survive,
    close() still succeeds."""
    proxy = lab.proxy(MasterProxy)
    listener, port = lab.listen(proxy)
    proxy.open_channels(2)
    qid = queue_id(proxy)
    assert qid is not None
    pool = lab.workers(proxy, listener, 2)
    for _ in range(3):
        lab.ask_via(proxy, listener, port)
    subprocess.run(["ipcrm", "-q", str(qid)], check=True, timeout=10)
    assert qid not in ipcs_queues()
    served = []
    for _ in range(8):
        index, pid = lab.ask_via(proxy, listener, port)
        assert pid == pool.pids[index]
        served.append(index)
    assert set(served) == {0, 1}, f"round-robin fallback should reach both workers: {served}"
    proxy.close()
    exited = pool.wait_all(timeout=2.0)
    assert len(exited) == 2
    for pid, status in exited.items():
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, (
            f"worker {pid} crashed after the queue vanished (status {status})"
        )


def test_token_queue_drops_foreign_messages_and_outlives_removal_from_outside() -> None:
    """IPC-07/IPC-08 at the queue: a message that is not a token is dropped, not
    misread; once the queue is removed from outside, take and post answer None
    and False (round-robin from then on) instead of raising."""
    queue = TokenQueue()
    try:
        assert queue.take() is None
        queue.send(TOKEN_MTYPE, b"not a token: longer than one")
        queue.send(TOKEN_MTYPE, b"short")
        assert queue.post(1, 7)
        assert queue.take() == (1, 7)
        assert queue.take() is None
        msgrm(queue.id)
        assert queue.post(0, 0) is False
        assert queue.take() is None
        assert not queue.alive
    finally:
        queue.remove()
