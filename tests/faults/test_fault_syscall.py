"""SyscallFault: real strace, real tracee processes, real sendmsg calls."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from fdpass_conformance.faults import syscall
from fdpass_conformance.faults.errors import FaultUnavailable
from fdpass_conformance.faults.syscall import SyscallFault, tracer_pid, when_expression
from fdpass_conformance.processes import call_in_child, exec_dies_with_parent

from .helpers import (
    SENDMSG_LOOP,
    LineProcess,
    dead_pid,
    proc_state,
    untraced_and_running,
    wait_for,
)

AVAILABLE, WHY = syscall.available()
needs_strace = pytest.mark.skipif(not AVAILABLE, reason=f"strace unavailable: {WHY}")


@needs_strace
@pytest.mark.timeout(30)
def test_exactly_the_second_sendmsg_fails_then_detach_leaves_it_running(
    tracee: LineProcess,
) -> None:
    fault = SyscallFault(tracee.pid, "sendmsg", "ENOBUFS", after=1, times=1)
    assert fault.when == "2"
    try:
        with fault:
            assert tracer_pid(tracee.pid) == fault.strace_pid
            assert tracee.ask("send 4") == "ok,ENOBUFS,ok,ok"
        assert fault.strace_pid is None
        assert fault.injected_count() == 1
        assert "sendmsg(" in fault.log_text()
        # Detached: the process is neither traced nor stopped, and sendmsg works again.
        wait_for(lambda: untraced_and_running(tracee.pid), 5, "an untraced, running tracee")
        assert tracee.ask("send 3") == "ok,ok,ok"
        assert tracee.ask("status") in ("tracer=0 state=R", "tracer=0 state=S")
    finally:
        fault.detach()


@needs_strace
@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("after", "times", "expected"),
    [
        (0, 1, "ENOBUFS,ok,ok,ok,ok"),
        (1, 2, "ok,ENOBUFS,ENOBUFS,ok,ok"),
        (2, None, "ok,ok,ENOBUFS,ENOBUFS,ENOBUFS"),
    ],
)
def test_after_and_times_map_onto_strace_when(
    tracee: LineProcess, after: int, times: int | None, expected: str
) -> None:
    with SyscallFault(tracee.pid, "sendmsg", "ENOBUFS", after=after, times=times) as fault:
        assert tracee.ask("send 5") == expected
    assert fault.injected_count() == expected.count("ENOBUFS")


@needs_strace
@pytest.mark.timeout(30)
def test_counting_is_per_process_with_follow_forks(tracee: LineProcess) -> None:
    """strace counts per tracee: a child forked while attached gets its own 1st call failed."""
    with SyscallFault(tracee.pid, "sendmsg", "EPIPE", after=0, times=1) as fault:
        assert tracee.ask("fork 2") == "child EPIPE,ok"
        assert tracee.readline() == "parent EPIPE,ok"
    assert fault.injected_count() == 2


@needs_strace
@pytest.mark.timeout(30)
def test_without_follow_forks_the_child_is_untouched(tracee: LineProcess) -> None:
    with SyscallFault(tracee.pid, "sendmsg", "EPIPE", follow_forks=False) as fault:
        assert tracee.ask("fork 2") == "child ok,ok"
        assert tracee.readline() == "parent EPIPE,ok"
    assert fault.injected_count() == 1


@needs_strace
@pytest.mark.timeout(30)
def test_strace_killed_the_kernel_detaches_and_the_tracee_runs_on(tracee: LineProcess) -> None:
    fault = SyscallFault(tracee.pid, "sendmsg", "ENOBUFS", times=None)
    try:
        fault.attach()
        assert tracee.ask("send 1") == "ENOBUFS"
        strace_pid = fault.strace_pid
        assert strace_pid is not None
        os.kill(strace_pid, signal.SIGKILL)
        wait_for(lambda: untraced_and_running(tracee.pid), 5, "the kernel to detach the tracee")
        assert tracee.ask("send 2") == "ok,ok"
    finally:
        fault.detach()  # reaps the killed strace


@needs_strace
@pytest.mark.timeout(30)
def test_strace_detaches_when_the_process_that_started_it_dies(tracee: LineProcess) -> None:
    """PR_SET_PDEATHSIG: our death makes strace detach instead of injecting forever.

    A subreaper child R forks C; C attaches a SyscallFault that fails every
    sendmsg and is then SIGKILLed (no cleanup runs). strace, reparented to R,
    must get SIGTERM, detach and exit; R reaps it.
    """
    if exec_dies_with_parent() is None:
        pytest.skip("no PR_SET_PDEATHSIG: strace would outlive us (documented)")
    tracee_pid = tracee.pid

    def reaper() -> bytes:
        libc = ctypes.CDLL(None, use_errno=True)
        assert libc.prctl(36, 1, 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER
        rfd, wfd = os.pipe()
        child = os.fork()
        if child == 0:
            try:
                fault = SyscallFault(tracee_pid, "sendmsg", "ENOBUFS", times=None)
                fault.attach()
                os.write(wfd, f"{fault.strace_pid} {fault.log_path}\n".encode())
                time.sleep(30)
            finally:
                os._exit(1)
        os.close(wfd)
        line = b""
        deadline = time.monotonic() + 15
        while not line.endswith(b"\n") and time.monotonic() < deadline:
            chunk = os.read(rfd, 256)
            if not chunk:
                break
            line += chunk
        strace_pid_text, log_path = line.decode().split()
        os.kill(child, signal.SIGKILL)
        statuses: dict[int, int] = {}
        while len(statuses) < 2 and time.monotonic() < deadline:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid:
                statuses[pid] = status
            else:
                time.sleep(0.005)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(log_path)
        strace_status = statuses.get(int(strace_pid_text))
        return f"{strace_status is not None}".encode()

    assert tracee.ask("send 1") == "ok"
    result = call_in_child(reaper, timeout=25)
    assert result.status == 0, result.output
    assert result.output == b"True"  # strace exited (and was reaped) after C died
    wait_for(lambda: untraced_and_running(tracee_pid), 5, "the tracee to be detached")
    assert tracee.ask("send 2") == "ok,ok"


@needs_strace
@pytest.mark.timeout(30)
def test_attach_errors_are_clear() -> None:
    with pytest.raises(ProcessLookupError, match="no process"):
        SyscallFault(dead_pid(), "sendmsg").attach()
    proc = LineProcess(SENDMSG_LOOP)
    try:
        with pytest.raises(RuntimeError, match=r"strace exited .* before attaching"):
            SyscallFault(proc.pid, "no_such_syscall_xyz").attach()
        first = SyscallFault(proc.pid, "sendmsg")
        with first, pytest.raises(RuntimeError, match=f"already traced by pid {first.strace_pid}"):
            SyscallFault(proc.pid, "sendmsg").attach()
        wait_for(lambda: untraced_and_running(proc.pid), 5, "detach")
    finally:
        proc.close()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"error": "ENOBUF"}, "unknown errno name 'ENOBUF'"),
        ({"error": "PIPE"}, "unknown errno name 'PIPE'"),
        ({"error": 0}, "within 1..4095"),
        ({"after": -1}, "after must be an int >= 0"),
        ({"times": 0}, "times must be an int >= 1 or None"),
        ({"after": 65535}, "strace's limit"),
        ({"after": 65000, "times": 535}, "strace's limit"),
        ({"syscall": "sendmsg; rm -rf /"}, "syscall must be a name"),
    ],
)
def test_arguments_are_validated_in_one_line(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        SyscallFault(os.getpid(), **kwargs)  # type: ignore[arg-type]
    assert "\n" not in str(info.value)


def test_when_expression() -> None:
    assert when_expression(0, 1) == "1"
    assert when_expression(4, 1) == "5"
    assert when_expression(1, 3) == "2..4"
    assert when_expression(0, None) == "1+"
    assert when_expression(9, None) == "10+"


def test_macos_reports_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    """MOCK: this Linux machine cannot run the macOS branch, so sys.platform is patched."""
    monkeypatch.setattr(sys, "platform", "darwin")
    ok, why = syscall.available.__wrapped__()
    assert (ok, why) == (False, "macOS has no strace (use the python layer)")
    syscall.available.cache_clear()
    try:
        with pytest.raises(FaultUnavailable, match="unavailable: macOS has no strace"):
            SyscallFault(os.getpid()).attach()
    finally:
        syscall.available.cache_clear()


FORGETFUL = """
import subprocess, sys
from fdpass_conformance.faults import syscall
from fdpass_conformance.faults.syscall import SyscallFault
syscall.exec_dies_with_parent = lambda sig: None  # no PR_SET_PDEATHSIG: only the exit hook
sleeper = subprocess.Popen(["sleep", "30"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
fault = SyscallFault(sleeper.pid, "sendmsg", "ENOBUFS", times=None)
fault.attach()
print(sleeper.pid, fault.strace_pid, flush=True)
del fault  # never detached: the interpreter's exit must stop strace
"""


@needs_strace
@pytest.mark.timeout(60)
def test_a_fault_never_detached_stops_its_strace_at_exit() -> None:
    out = subprocess.run(
        [sys.executable, "-c", FORGETFUL], capture_output=True, text=True, timeout=30, check=True
    )
    sleeper, strace = (int(x) for x in out.stdout.split())
    try:
        wait_for(lambda: not _alive(strace), 5, f"strace (pid {strace}) to be gone")
    finally:
        for pid in (strace, sleeper):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        return proc_state(pid) not in ("Z", "X")
    except FileNotFoundError:
        return False


class _Interrupted(Exception):
    """What pytest-timeout's alarm (or Ctrl-C) raises wherever the main thread is."""


def _interrupt_main_thread_in(seconds: float) -> threading.Timer:
    """SIGUSR1 at this process after ``seconds``; its handler raises _Interrupted.

    SIGUSR1, not SIGALRM: pytest-timeout keeps its own alarm for the test.
    """

    def raise_interrupted(signum: int, frame: object) -> None:
        raise _Interrupted

    signal.signal(signal.SIGUSR1, raise_interrupted)
    timer = threading.Timer(seconds, os.kill, (os.getpid(), signal.SIGUSR1))
    timer.start()
    return timer


@needs_strace
@pytest.mark.timeout(30)
def test_a_detach_cut_short_by_a_timeout_leaves_no_strace(tracee: LineProcess) -> None:
    """The stray strace of the CI dry runs: a test that times out while detach() waits.

    strace is stopped so that it cannot act on SIGINT (as a strace slow to
    detach under load), and the wait is interrupted long before
    ``detach_timeout``. detach() used to forget strace first, so it then ran
    on with nobody left to stop it; now the interruption SIGKILLs it.
    """
    fault = SyscallFault(tracee.pid, "sendmsg", "ENOBUFS", times=None, detach_timeout=20)
    fault.attach()
    strace_pid = fault.strace_pid
    assert strace_pid is not None
    previous = signal.getsignal(signal.SIGUSR1)
    try:
        os.kill(strace_pid, signal.SIGSTOP)
        wait_for(lambda: proc_state(strace_pid) == "T", 5, "strace to stop")
        timer = _interrupt_main_thread_in(0.3)
        start = time.monotonic()
        with pytest.raises(_Interrupted):
            fault.detach()
        timer.join()
        assert time.monotonic() - start < 10, "detach() waited out its timeout"
        assert not _alive(strace_pid), "an interrupted detach() left strace running"
        wait_for(lambda: untraced_and_running(tracee.pid), 5, "an untraced, running tracee")
        assert tracee.ask("send 2") == "ok,ok"
    finally:
        signal.signal(signal.SIGUSR1, previous)
        if _alive(strace_pid):  # the old behaviour: do not let this test leave it behind
            os.kill(strace_pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(strace_pid, 0)


@needs_strace
@pytest.mark.timeout(30)
def test_strace_ends_with_its_traced_process() -> None:
    """The traced process killed (a test killing its server): strace leaves on its own."""
    proc = LineProcess(SENDMSG_LOOP)
    fault = SyscallFault(proc.pid, "sendmsg", "ENOBUFS", times=None, follow_forks=False)
    try:
        fault.attach()
        strace_pid = fault.strace_pid
        assert strace_pid is not None
        proc.close()  # SIGKILL and reap
        wait_for(lambda: not _alive(strace_pid), 10, "strace to leave with its tracee")
    finally:
        fault.detach()
        proc.close()


@needs_strace
@pytest.mark.timeout(30)
def test_a_forked_child_leaves_the_parents_strace_alone(tracee: LineProcess) -> None:
    """A child that exits through the interpreter's exit hooks runs detach() on the faults it
    inherited: that must neither stop the parent's strace nor remove the parent's log."""
    with SyscallFault(tracee.pid, "sendmsg", "ENOBUFS", times=None) as fault:
        log_path = fault.log_path

        def forget() -> bytes:
            fault.detach()  # what syscall._detach_all does in a child at exit
            return b"done"

        assert call_in_child(forget).output == b"done"
        assert fault.strace_pid is not None and tracer_pid(tracee.pid) == fault.strace_pid
        assert log_path is not None and os.path.exists(log_path)
        assert tracee.ask("send 1") == "ENOBUFS"
    assert fault.injected_count() == 1
