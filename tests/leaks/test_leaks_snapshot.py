"""Snapshots, diff and assert_no_leaks against real leaks of every kind.

IPC checks use ``own_ipc.lister``: the real ``ipcs`` filtered to the objects
this test made, because tests of other suites may create objects at the
same time, and cleanup must never remove theirs.
"""

from __future__ import annotations

import os
import pickle
import pwd
import re
import socket
from collections.abc import Iterator

import psutil  # type: ignore[import-untyped, unused-ignore]
import pytest

from fdpass_conformance.leaks import (
    IpcObject,
    Leak,
    LeakError,
    assert_no_leaks,
    diff,
    is_same_process,
    take_snapshot,
)

from .helpers import Children, OwnIpc, needs_ipcmk, needs_linux, read_line, wait_until

pytestmark = needs_linux


@pytest.fixture
def sockets() -> Iterator[list[socket.socket]]:
    opened: list[socket.socket] = []
    try:
        yield opened
    finally:
        for sock in opened:
            sock.close()


# --- fds ----------------------------------------------------------------------


def test_nothing_new_is_no_leak() -> None:
    before = take_snapshot([os.getpid()], ipc_lister=None)
    after = take_snapshot([os.getpid()], ipc_lister=None)
    assert diff(before, after) == []
    assert_no_leaks(before, after)


def test_new_socketpair_is_two_fd_leaks(sockets: list[socket.socket]) -> None:
    me = os.getpid()
    before = take_snapshot([me], ipc_lister=None)
    a, b = socket.socketpair()
    sockets += [a, b]
    a.set_inheritable(True)
    after = take_snapshot([me], ipc_lister=None)
    leaks = diff(before, after)
    assert [leak.kind for leak in leaks] == ["fd", "fd"]
    first, second = sorted((a.fileno(), b.fileno()))
    assert re.fullmatch(
        rf"fd {a.fileno()} \(unix, cloexec=no\) in pid {me}: socket:\[\d+\]",
        next(leak.description for leak in leaks if f"fd {a.fileno()} " in leak.description),
    )
    assert f"fd {b.fileno()} (unix, cloexec=yes) in pid {me}: socket:[" in str(leaks)
    with pytest.raises(LeakError) as info:
        assert_no_leaks(before, after, context="test_new_socketpair")
    lines = str(info.value).splitlines()
    assert lines[0] == "2 leaks [test_new_socketpair]:"
    assert lines[1].startswith(f"  fd {first} (unix")
    assert lines[2].startswith(f"  fd {second} (unix")
    assert len(lines) == 3  # fds are never "cleaned up" in another process
    assert info.value.leaks == leaks


def test_closed_fd_is_not_a_leak() -> None:
    r, w = os.pipe()
    try:
        before = take_snapshot([os.getpid()], ipc_lister=None)
    finally:
        os.close(r)
        os.close(w)
    after = take_snapshot([os.getpid()], ipc_lister=None)
    assert diff(before, after) == []


def test_fd_number_reused_for_another_object_is_a_leak(sockets: list[socket.socket]) -> None:
    # Same count, same number, different object: a count-based check would
    # miss this; the inventory names it.
    r, w = os.pipe()
    try:
        before = take_snapshot([os.getpid()], ipc_lister=None)
        a, b = socket.socketpair()
        sockets += [a, b]
        os.dup2(a.fileno(), r)
        after = take_snapshot([os.getpid()], ipc_lister=None)
        descriptions = [leak.description for leak in diff(before, after)]
        assert any(d.startswith(f"fd {r} (unix") for d in descriptions), descriptions
    finally:
        os.close(r)
        os.close(w)


def test_fd_leak_in_another_process(children: Children) -> None:
    proc = children.python(
        "import socket, sys\n"
        "print('ready', flush=True)\n"
        "sys.stdin.readline()\n"
        "a, b = socket.socketpair()\n"
        "print(a.fileno(), flush=True)\n"
        "sys.stdin.read()\n"
    )
    assert read_line(proc) == "ready"
    before = take_snapshot([proc.pid], ipc_lister=None)
    assert proc.stdin is not None
    proc.stdin.write("go\n")
    proc.stdin.flush()
    leaked_fd = int(read_line(proc))
    after = take_snapshot([proc.pid], ipc_lister=None)
    descriptions = [leak.description for leak in diff(before, after)]
    assert f"fd {leaked_fd} (unix, cloexec=yes) in pid {proc.pid}" in " ".join(descriptions)


def test_dead_pid_has_no_fds_and_is_not_compared(children: Children) -> None:
    pid = children.fork_exiting()
    os.waitpid(pid, 0)
    before = take_snapshot([pid], ipc_lister=None)
    assert before.fds == {}
    assert diff(before, take_snapshot([pid], ipc_lister=None)) == []


# --- processes ------------------------------------------------------------------


def test_new_child_is_a_process_leak_and_cleanup_kills_it(children: Children) -> None:
    before = take_snapshot([os.getpid()], ipc_lister=None)
    pid = children.fork_sleeper()
    after = take_snapshot([os.getpid()], ipc_lister=None)
    leaks = diff(before, after)
    process_leaks = [leak for leak in leaks if leak.kind == "process"]
    assert [leak.pid for leak in process_leaks] == [pid]
    assert process_leaks[0].description.startswith(f"process {pid} (")
    with pytest.raises(LeakError) as info:
        assert_no_leaks(before, after, context="test_child")
    assert f"cleanup: killed pid {pid}" in str(info.value).splitlines()
    # killed and reaped: not a child any more, not even a zombie
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def test_unreaped_child_is_a_leak_and_a_gone_one_is_not_killed(children: Children) -> None:
    before = take_snapshot([os.getpid()], ipc_lister=None)
    pid = children.fork_exiting()
    assert wait_until(lambda: psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    after = take_snapshot([os.getpid()], ipc_lister=None)
    (leak,) = diff(before, after)
    assert leak.kind == "process" and leak.pid == pid
    assert leak.description.startswith(f"process {pid} (")
    assert leak.description.endswith(f"parent {os.getpid()}, zombie)")
    os.waitpid(pid, 0)  # reaped: the pid may now be recycled, cleanup must not touch it
    assert leak.process is not None and not is_same_process(leak.process)
    with pytest.raises(LeakError) as info:
        assert_no_leaks(before, after)
    assert "cleanup:" not in str(info.value)


def test_child_that_existed_before_is_not_a_leak(children: Children) -> None:
    children.fork_sleeper()
    before = take_snapshot([os.getpid()], ipc_lister=None)
    after = take_snapshot([os.getpid()], ipc_lister=None)
    assert diff(before, after) == []


def test_cleanup_false_leaves_processes_alone(children: Children) -> None:
    before = take_snapshot([os.getpid()], ipc_lister=None)
    pid = children.fork_sleeper()
    after = take_snapshot([os.getpid()], ipc_lister=None)
    with pytest.raises(LeakError) as info:
        assert_no_leaks(before, after, cleanup=False)
    assert "cleanup:" not in str(info.value)
    assert psutil.Process(pid).status() != psutil.STATUS_ZOMBIE


# --- ports ----------------------------------------------------------------------


def test_new_listener_is_a_port_and_an_fd_leak(sockets: list[socket.socket]) -> None:
    me = os.getpid()
    before = take_snapshot([me], ipc_lister=None)
    listener = socket.create_server(("127.0.0.1", 0))
    sockets.append(listener)
    port = listener.getsockname()[1]
    after = take_snapshot([me], ipc_lister=None)
    leaks = diff(before, after)
    assert Leak("port", f"port {port} listening in pid {me}") in leaks
    fd_leak = [leak for leak in leaks if leak.kind == "fd"]
    assert [leak.description for leak in fd_leak] == [
        f"fd {listener.fileno()} (tcp-listen, cloexec=yes) in pid {me}: "
        f"socket:[{os.readlink(f'/proc/self/fd/{listener.fileno()}')[8:-1]}] 127.0.0.1:{port}"
    ]


# --- System V objects -----------------------------------------------------------


def test_new_queue_is_reported_in_one_line_and_removed(own_ipc: OwnIpc) -> None:
    before = take_snapshot([os.getpid()], ipc_lister=own_ipc.lister)
    q = own_ipc.queue(0o600)
    after = take_snapshot([os.getpid()], ipc_lister=own_ipc.lister)
    leaks = diff(before, after)
    owner = pwd.getpwuid(os.geteuid()).pw_name[:10]  # util-linux cuts names at 10
    description = f"queue id={q.id} key=0x00000000 mode=0600 owner={owner}"
    assert leaks == [Leak("ipc", description, IpcObject("queue", q.id, 0, 0o600, owner))]
    with pytest.raises(LeakError) as info:
        assert_no_leaks(before, after, context="test_queue")
    assert str(info.value).splitlines() == [
        "1 leak [test_queue]:",
        f"  queue id={q.id} key=0x00000000 mode=0600 owner={owner}",
        f"cleanup: removed queue id={q.id}",
    ]
    assert own_ipc.lister() == []  # really gone, as ipcs sees it


def test_cleanup_false_leaves_the_queue(own_ipc: OwnIpc) -> None:
    before = take_snapshot([os.getpid()], ipc_lister=own_ipc.lister)
    q = own_ipc.queue(0o640)
    after = take_snapshot([os.getpid()], ipc_lister=own_ipc.lister)
    with pytest.raises(LeakError, match=f"queue id={q.id} key=0x00000000 mode=0640"):
        assert_no_leaks(before, after, cleanup=False)
    assert [obj.id for obj in own_ipc.lister()] == [q.id]  # removed by the fixture


@needs_ipcmk
@pytest.mark.parametrize("kind", ["shm", "sem"])
def test_new_shm_and_sem_are_reported_and_removed(own_ipc: OwnIpc, kind: str) -> None:
    before = take_snapshot([os.getpid()], ipc_lister=own_ipc.lister)
    ident = own_ipc.ipcmk(kind, 0o600)
    after = take_snapshot([os.getpid()], ipc_lister=own_ipc.lister)
    with pytest.raises(LeakError) as info:
        assert_no_leaks(before, after)
    assert re.search(rf"^  {kind} id={ident} key=0x[0-9a-f]{{8}} mode=0600 ", str(info.value), re.M)
    assert own_ipc.lister() == []


def test_removed_queue_is_not_a_leak(own_ipc: OwnIpc) -> None:
    q = own_ipc.queue()
    before = take_snapshot([os.getpid()], ipc_lister=own_ipc.lister)
    assert before.ipc is not None and len(before.ipc) == 1
    q.remove()
    after = take_snapshot([os.getpid()], ipc_lister=own_ipc.lister)
    assert after.ipc == []
    assert diff(before, after) == []


def test_queue_made_in_a_worker_is_seen(own_ipc: OwnIpc, children: Children) -> None:
    # The object outlives the process that made it; the leak is still named.
    proc = children.python(
        "from fdpass_conformance.sysv import msgget\nprint(msgget(mode=0o600), flush=True)\n"
    )
    before = take_snapshot([os.getpid()], ipc_lister=own_ipc.lister)
    qid = int(read_line(proc))
    own_ipc.ids.add(("queue", qid))
    proc.wait(timeout=10)
    after = take_snapshot([os.getpid()], ipc_lister=own_ipc.lister)
    with pytest.raises(LeakError, match=f"queue id={qid} "):
        assert_no_leaks(before, after)
    assert own_ipc.lister() == []


def test_default_lister_is_the_real_ipcs() -> None:
    # read-only: the global view may hold other suites' objects
    assert take_snapshot([os.getpid()]).ipc is not None


def test_ipc_not_compared_without_a_lister(own_ipc: OwnIpc) -> None:
    before = take_snapshot([os.getpid()], ipc_lister=None)
    own_ipc.queue()
    after = take_snapshot([os.getpid()], ipc_lister=None)
    assert diff(before, after) == []


# --- the error itself -----------------------------------------------------------


def test_leak_error_lists_every_leak_one_per_line() -> None:
    leaks = [
        Leak("fd", "fd 7 (unix, cloexec=no) in pid 1234: socket:[99]"),
        Leak("ipc", "queue id=3 key=0x00000000 mode=0600 owner=root"),
    ]
    error = LeakError(leaks, "test_x")
    assert isinstance(error, AssertionError)
    assert str(error) == (
        "2 leaks [test_x]:\n"
        "  fd 7 (unix, cloexec=no) in pid 1234: socket:[99]\n"
        "  queue id=3 key=0x00000000 mode=0600 owner=root"
    )
    assert (
        str(LeakError(leaks[:1])) == "1 leak:\n  fd 7 (unix, cloexec=no) in pid 1234: socket:[99]"
    )


def test_everything_at_once_is_reported_in_kind_order(
    own_ipc: OwnIpc, children: Children, sockets: list[socket.socket]
) -> None:
    before = take_snapshot([os.getpid()], ipc_lister=own_ipc.lister)
    own_ipc.queue()
    pid = children.fork_sleeper()
    sockets.append(socket.create_server(("127.0.0.1", 0)))
    after = take_snapshot([os.getpid()], ipc_lister=own_ipc.lister)
    kinds = [leak.kind for leak in diff(before, after)]
    assert kinds == ["fd", "process", "ipc", "port"]
    with pytest.raises(LeakError) as info:
        assert_no_leaks(before, after, context="all")
    message = str(info.value)
    assert message.startswith("4 leaks [all]:\n")
    assert own_ipc.lister() == []
    assert wait_until(lambda: not psutil.pid_exists(pid))


def test_leak_error_survives_pickling() -> None:
    leak = Leak("ipc", "queue id=3 key=0x00000000 mode=0600 owner=root")
    error = LeakError([leak], "ctx", ["cleanup: removed queue id=3"])
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.leaks, copy.context, copy.notes) == (
        [leak],
        "ctx",
        ["cleanup: removed queue id=3"],
    )
    assert str(copy) == str(error)


def test_file_deleted_while_open_is_not_a_new_fd(tmp_path: os.PathLike[str]) -> None:
    path = os.path.join(os.fspath(tmp_path), "gone.txt")
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC)
    try:
        before = take_snapshot([os.getpid()], ipc_lister=None)
        os.unlink(path)
        after = take_snapshot([os.getpid()], ipc_lister=None)
        (info,) = [i for i in after.fds[os.getpid()] if i.fd == fd]
        assert info.target.endswith(" (deleted)")
        assert diff(before, after) == []
    finally:
        os.close(fd)
