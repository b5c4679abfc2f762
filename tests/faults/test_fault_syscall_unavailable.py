"""SyscallFault where strace cannot be used, and the edges of attach and detach.

The availability probe is run for real against stand-in ``strace``
programs put first on PATH (a missing one, one that fails the way
strace fails under a seccomp policy, one that cannot be executed), so each
reason is the one a user would read. Yama is not enabled on this kernel: those
tests patch the file read and say so. The attach/detach edges use the real
strace on a real tracee.
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import stat
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fdpass_conformance.faults import syscall
from fdpass_conformance.faults.syscall import SyscallFault
from fdpass_conformance.processes import call_in_child

from .helpers import LineProcess, proc_state, untraced_and_running, wait_for

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="strace is Linux-only"),
]
AVAILABLE, WHY = syscall.available()
needs_strace = pytest.mark.skipif(not AVAILABLE, reason=f"strace unavailable: {WHY}")


@pytest.fixture
def fresh_probes() -> Iterator[None]:
    """The probes are cached per process: start and leave with empty caches."""
    syscall.available.cache_clear()
    yield
    syscall.available.cache_clear()


def _program(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


@pytest.fixture
def bin_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_probes: None) -> Path:
    """An empty directory that is the whole PATH: no strace, no setpriv."""
    directory = tmp_path / "bin"
    directory.mkdir()
    monkeypatch.setenv("PATH", str(directory))
    return directory


def test_no_strace_on_path(bin_dir: Path) -> None:
    assert syscall.available() == (False, "strace not found on PATH")
    with pytest.raises(Exception, match="syscall fault injection unavailable: strace not found"):
        SyscallFault(os.getpid()).attach()


def test_a_strace_that_cannot_trace_gives_its_own_message(bin_dir: Path) -> None:
    """What strace prints under a seccomp policy that forbids ptrace, in one line."""
    _program(
        bin_dir,
        "strace",
        "#!/bin/sh\necho 'strace: test_ptrace_get_syscall_info: PTRACE_TRACEME: "
        "Operation not permitted' >&2\necho 'strace: exec: Operation not permitted' >&2\nexit 1\n",
    )
    assert syscall.available() == (
        False,
        "strace cannot trace here: strace: test_ptrace_get_syscall_info: PTRACE_TRACEME: "
        "Operation not permitted / strace: exec: Operation not permitted",
    )


def test_a_silent_failing_strace_gives_its_status(bin_dir: Path) -> None:
    _program(bin_dir, "strace", "#!/bin/sh\nexit 3\n")
    assert syscall.available() == (False, "strace cannot trace here: status 3")


def test_a_strace_that_cannot_be_executed(bin_dir: Path) -> None:
    _program(bin_dir, "strace", "#!/nonexistent/interpreter\n")
    ok, why = syscall.available()
    assert not ok
    assert why.startswith("strace probe failed: [Errno 2] No such file or directory"), why


def test_other_unix_is_named(monkeypatch: pytest.MonkeyPatch, fresh_probes: None) -> None:
    """MOCK: sys.platform patched to FreeBSD's, which this machine cannot run."""
    monkeypatch.setattr(sys, "platform", "freebsd14")
    assert syscall.available() == (False, "strace is Linux-only, not available on freebsd14")


# -- Yama (MOCK: not enabled on this kernel; the file read is patched) ----------------


def _yama_scope(monkeypatch: pytest.MonkeyPatch, text: str | None) -> None:
    real_open: Any = open

    def fake_open(path: str, *args: Any, **kwargs: Any) -> Any:
        if path == "/proc/sys/kernel/yama/ptrace_scope":
            if text is None:
                raise FileNotFoundError(path)
            return io.StringIO(text)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(syscall, "open", fake_open, raising=False)


@pytest.mark.parametrize(
    ("scope", "has_cap", "reason"),
    [
        (None, False, ""),
        ("garbage\n", False, ""),
        ("0\n", False, ""),
        ("1\n", True, ""),
        (
            "1\n",
            False,
            "kernel.yama.ptrace_scope=1: strace may attach only to its own descendants "
            "(run as root or set kernel.yama.ptrace_scope=0)",
        ),
        ("2\n", True, ""),
        ("3\n", True, "kernel.yama.ptrace_scope=3 forbids ptrace attach"),
    ],
)
def test_yama_scope_decides(
    monkeypatch: pytest.MonkeyPatch, scope: str | None, has_cap: bool, reason: str
) -> None:
    """MOCK: the Yama sysctl's content and CAP_SYS_PTRACE are given."""
    _yama_scope(monkeypatch, scope)
    monkeypatch.setattr(syscall, "_has_cap_sys_ptrace", lambda: has_cap)
    assert syscall._yama_reason() == reason


def test_yama_refusal_is_the_availability_reason(
    monkeypatch: pytest.MonkeyPatch, fresh_probes: None
) -> None:
    """MOCK: Yama scope 3 (see above); strace on PATH is the real one, or none."""
    _yama_scope(monkeypatch, "3\n")
    if shutil.which("strace") is None:
        pytest.skip("no strace on PATH: the Yama check is not reached")
    assert syscall.available() == (False, "kernel.yama.ptrace_scope=3 forbids ptrace attach")


def test_cap_sys_ptrace_is_read_from_our_own_status() -> None:
    """Real: root has CAP_SYS_PTRACE; a child that gave up root has none."""
    if os.geteuid() != 0:
        assert not syscall._has_cap_sys_ptrace()
        return
    assert syscall._has_cap_sys_ptrace()

    def as_nobody() -> bytes:
        os.setgroups([])
        os.setresgid(65534, 65534, 65534)
        os.setresuid(65534, 65534, 65534)
        return str(syscall._has_cap_sys_ptrace()).encode()

    assert call_in_child(as_nobody).output == b"False"


def test_cap_sys_ptrace_unreadable_status_is_no(monkeypatch: pytest.MonkeyPatch) -> None:
    """MOCK: /proc/self/status cannot be opened (no /proc mounted)."""

    def no_proc(path: str, *args: Any, **kwargs: Any) -> Any:
        raise FileNotFoundError(path)

    monkeypatch.setattr(syscall, "open", no_proc, raising=False)
    assert syscall._has_cap_sys_ptrace() is False


# -- arguments, attach and detach edges --------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"pid": 0}, "pid must be a positive int, got 0"),
        ({"pid": True}, "pid must be a positive int, got True"),
        ({"attach_timeout": 0}, "attach_timeout must be positive, got 0"),
        ({"detach_timeout": -1.0}, "detach_timeout must be positive, got -1.0"),
        ({"settle": -0.1}, "settle must be >= 0, got -0.1"),
    ],
)
def test_more_arguments_are_validated(kwargs: dict[str, Any], message: str) -> None:
    args: dict[str, Any] = {"pid": os.getpid(), **kwargs}
    with pytest.raises(ValueError, match=message):
        SyscallFault(**args)


def test_repr_and_a_fault_never_attached() -> None:
    fault = SyscallFault(4242, "sendmsg", "EPIPE", after=2, times=3)
    assert repr(fault) == "SyscallFault(pid=4242, sendmsg:error=EPIPE:when=3..5, attached=False)"
    assert fault.strace_pid is None
    assert fault.log_text() == ""
    assert fault.injected_count() == 0
    fault.detach()  # nothing to do, and no error
    assert fault.strace_stderr == ""


@needs_strace
def test_attach_twice_and_a_removed_log(tracee: LineProcess) -> None:
    fault = SyscallFault(tracee.pid, "sendmsg", "ENOBUFS", times=None)
    try:
        fault.attach()
        assert "attached=True" in repr(fault)
        with pytest.raises(RuntimeError, match="SyscallFault is already attached"):
            fault.attach()
        assert tracee.ask("send 1") == "ENOBUFS"
        assert fault.log_path is not None
        os.unlink(fault.log_path)  # someone cleaned /tmp meanwhile
        assert fault.log_text() == ""
    finally:
        fault.detach()
    assert fault.injected_count() == 0  # the log went with the file; nothing is made up
    wait_for(lambda: untraced_and_running(tracee.pid), 5, "an untraced, running tracee")
    assert tracee.ask("send 2") == "ok,ok"


@needs_strace
def test_attach_past_its_deadline_stops_strace_and_leaves_the_tracee_alone(
    tracee: LineProcess,
) -> None:
    fault = SyscallFault(tracee.pid, "sendmsg", "ENOBUFS", times=None, attach_timeout=1e-9)
    with pytest.raises(TimeoutError, match=f"strace did not attach to pid {tracee.pid} within"):
        fault.attach()
    assert fault.strace_pid is None
    wait_for(lambda: untraced_and_running(tracee.pid), 5, "an untraced, running tracee")
    assert tracee.ask("send 2") == "ok,ok"


@needs_strace
def test_a_stuck_strace_is_killed_after_the_detach_timeout(tracee: LineProcess) -> None:
    """strace stopped (SIGSTOP) cannot act on SIGINT: detach kills it after detach_timeout,
    the kernel detaches the tracee, which runs on."""
    fault = SyscallFault(tracee.pid, "sendmsg", "ENOBUFS", times=None, detach_timeout=0.3)
    try:
        fault.attach()
        strace_pid = fault.strace_pid
        assert strace_pid is not None
        assert tracee.ask("send 1") == "ENOBUFS"
        os.kill(strace_pid, signal.SIGSTOP)
        wait_for(lambda: proc_state(strace_pid) == "T", 5, "strace to stop")
    finally:
        fault.detach()
    with pytest.raises(ProcessLookupError):
        os.kill(strace_pid, 0)  # killed and reaped
    wait_for(lambda: untraced_and_running(tracee.pid), 5, "an untraced, running tracee")
    assert tracee.ask("send 2") == "ok,ok"
