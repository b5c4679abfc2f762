"""Kernel-level faults on real processes: prlimit, full fd tables, signals."""

from __future__ import annotations

import errno
import os
import resource
import select
import signal
import socket
import sys
import time

import pytest

from fdpass_conformance.faults import kernel
from fdpass_conformance.faults.errors import FaultUnavailable
from fdpass_conformance.faults.kernel import (
    close_fds,
    fill_fd_table,
    get_nofile_limit,
    restore_nofile_limit,
    set_nofile_limit,
)
from fdpass_conformance.processes import call_in_child, kill_and_reap, wait_pid

from .helpers import dead_pid, proc_state, wait_for

needs_linux = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="prlimit and /proc are Linux-only"
)


def _lowest_free_fd() -> int:
    fd = os.dup(0)
    os.close(fd)
    return fd


def _socket_errno() -> int:
    try:
        socket.socket().close()
    except OSError as exc:
        return exc.errno or -1
    return 0


@needs_linux
@pytest.mark.timeout(30)
def test_set_nofile_limit_on_a_child_makes_its_socket_fail_with_emfile() -> None:
    """The parent lowers the child's limit to its lowest free fd: every number is then taken."""
    to_child_r, to_child_w = os.pipe()
    to_parent_r, to_parent_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            os.close(to_child_w)
            os.close(to_parent_r)
            os.write(to_parent_w, f"{_lowest_free_fd()}\n".encode())
            for _ in range(2):
                if os.read(to_child_r, 1) != b"g":
                    break
                os.write(to_parent_w, f"{_socket_errno()}\n".encode())
        finally:
            os._exit(0)
    os.close(to_child_r)
    os.close(to_parent_w)
    try:
        lowest = int(_read_line(to_parent_r))
        own = resource.getrlimit(resource.RLIMIT_NOFILE)
        prev = set_nofile_limit(pid, lowest)
        assert prev == own  # the child inherited ours; the previous pair is returned
        assert get_nofile_limit(pid) == (lowest, own[1])
        os.write(to_child_w, b"g")
        assert int(_read_line(to_parent_r)) == errno.EMFILE
        restore_nofile_limit(pid, prev)
        assert get_nofile_limit(pid) == own
        os.write(to_child_w, b"g")
        assert int(_read_line(to_parent_r)) == 0
        assert wait_pid(pid, 10) == 0
    finally:
        os.close(to_child_w)
        os.close(to_parent_r)
        kill_and_reap(pid)


def _read_line(fd: int, timeout: float = 10.0) -> str:
    data = b""
    deadline = time.monotonic() + timeout
    while not data.endswith(b"\n"):
        ready, _, _ = select.select([fd], [], [], max(deadline - time.monotonic(), 0))
        if not ready:
            raise TimeoutError("no line from the child")
        chunk = os.read(fd, 64)
        if not chunk:
            raise EOFError("child closed the pipe")
        data += chunk
    return data.decode().strip()


@needs_linux
@pytest.mark.timeout(30)
def test_fill_fd_table_makes_recvmsg_report_msg_ctrunc() -> None:
    """In a forked child: an fd passed while the table is full is dropped with MSG_CTRUNC."""

    def child() -> bytes:
        highest = max(int(name) for name in os.listdir("/proc/self/fd"))
        set_nofile_limit(os.getpid(), highest + 32)  # a small table, quick to fill
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        r, _w = os.pipe()
        socket.send_fds(a, [b"x"], [r])
        held = fill_fd_table()
        try:
            emfile = _socket_errno()
            _msg, anc, flags, _ = b.recvmsg(1, socket.CMSG_SPACE(4 * 4))
            truncated = bool(flags & socket.MSG_CTRUNC)
            got = len(anc)
        finally:
            close_fds(held)
        socket.send_fds(a, [b"y"], [r])
        _msg, fds, flags, _ = socket.recv_fds(b, 1, 4)
        ok_after = len(fds) == 1 and not flags & socket.MSG_CTRUNC
        return f"emfile={emfile} ctrunc={truncated} anc={got} after={ok_after}".encode()

    result = call_in_child(child, timeout=20)
    assert result.status == 0, result.output
    assert result.output == f"emfile={errno.EMFILE} ctrunc=True anc=0 after=True".encode()


@needs_linux
@pytest.mark.timeout(30)
def test_fill_fd_table_keep_free_leaves_exactly_that_many() -> None:
    def child() -> bytes:
        highest = max(int(name) for name in os.listdir("/proc/self/fd"))
        set_nofile_limit(os.getpid(), highest + 20)
        held = fill_fd_table(keep_free=2)
        extra = []
        try:
            while True:
                extra.append(os.dup(0))
        except OSError as exc:
            code = exc.errno
        close_fds(held + extra)
        return f"{len(extra)} {code}".encode()

    result = call_in_child(child, timeout=20)
    assert result.output == f"2 {errno.EMFILE}".encode(), result.output


def test_fill_fd_table_refuses_a_huge_table_and_bad_arguments() -> None:
    with pytest.raises(ValueError, match="lower it first"):
        fill_fd_table(max_fds=4)
    with pytest.raises(ValueError, match="keep_free must be an int >= 0"):
        fill_fd_table(-1)


@needs_linux
@pytest.mark.timeout(30)
def test_stop_cont_kill() -> None:
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            time.sleep(20)
        finally:
            os._exit(0)
    try:
        kernel.stop(pid)
        wait_for(lambda: proc_state(pid) == "T", 5, "the child to stop")
        kernel.cont(pid)
        wait_for(lambda: proc_state(pid) == "S", 5, "the child to resume")
        kernel.kill(pid)
        assert wait_pid(pid, 5) == -signal.SIGKILL
    finally:
        kill_and_reap(pid)


@needs_linux
def test_errors_name_the_pid() -> None:
    with pytest.raises(ProcessLookupError, match="no such process"):
        set_nofile_limit(dead_pid(), 10)
    with pytest.raises(ValueError, match="exceeds the hard limit"):
        set_nofile_limit(os.getpid(), resource.getrlimit(resource.RLIMIT_NOFILE)[1] + 1)
    with pytest.raises(ValueError, match="pid must be a positive int"):
        set_nofile_limit(0, 10)


@pytest.mark.timeout(30)
def test_macos_path_only_changes_its_own_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """MOCK: sys.platform is patched to "darwin" because the macOS branch cannot run here.

    The branch itself then runs for real: setrlimit on our own pid (in a forked
    child, so pytest's limit is untouched), a clear error for another pid.
    """
    monkeypatch.setattr(sys, "platform", "darwin")
    ok, note = kernel.available()
    assert ok and "calling process only" in note
    with pytest.raises(FaultUnavailable, match=r"another process \(pid 1\) is unavailable"):
        set_nofile_limit(1, 10)

    def child() -> bytes:
        prev = set_nofile_limit(os.getpid(), 50)
        now = resource.getrlimit(resource.RLIMIT_NOFILE)
        restore_nofile_limit(os.getpid(), prev)
        return f"{now[0]} {resource.getrlimit(resource.RLIMIT_NOFILE) == prev}".encode()

    assert call_in_child(child, timeout=10).output == b"50 True"
