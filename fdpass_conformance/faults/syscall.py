"""Syscall-level fault injection: make the Nth call of a syscall fail, in any language.

Why strace: ``strace -e inject=`` rewrites a syscall of a running process to
fail with a chosen errno, whatever language the implementation is written in
(Python, PHP, C), without changing its code. :class:`SyscallFault` attaches
strace to a live pid for the duration of a ``with`` block.

Counting (strace 6.1, checked on this machine): ``when=first``,
``when=first..last``, ``when=first+`` and ``when=first+step`` are all
accepted; first is 1..65535, last 1..65534. ``after=N, times=K`` maps to
``when=N+1..N+K`` (``when=N+1`` for K=1) and ``times=None`` to ``when=N+1+``
(every call from N+1 on). Invocations are counted per syscall and per tracee
(each thread and each forked process counts from 1), from the moment of
attach: with ``follow_forks`` every worker forked later gets its own N+1..N+K.

If the tracer dies, the tracee is never left stopped:

* strace attaches with ``PTRACE_SEIZE``, which does not stop the tracee, and
  on SIGINT/SIGTERM it ``PTRACE_DETACH``es every tracee, which continues.
* If strace is SIGKILLed the kernel detaches its tracees itself and they
  continue; at most the one call strace was rewriting at that instant fails
  with ENOSYS instead of the requested errno.
* If *our* process dies, strace would go on tracing (and injecting) until its
  tracees exit. To avoid that, strace is started with a parent-death signal
  (``processes.exec_dies_with_parent(SIGTERM)``: ``PR_SET_PDEATHSIG`` set
  between fork and exec, and an exit if the parent is already gone), so
  strace detaches cleanly when the thread that started it dies (enter the
  fault from the thread that will outlive it, normally the main thread).
* :meth:`SyscallFault.detach` never returns or raises with strace still
  running: SIGINT first, SIGKILL when strace has not left within
  ``detach_timeout`` *or when anything interrupts the wait* (pytest-timeout's
  alarm, Ctrl-C). It used to forget strace before it was gone, so a test that
  timed out while detaching left a strace nobody could reach any more: the
  stray strace of the CI dry runs.
* A forked child that runs the exit hooks (a normal interpreter exit) leaves
  the parent's strace and log alone: only the process that attached detaches.

Attaching waits until ``TracerPid`` of the tracee (every thread of it, with
``follow_forks``) is strace's pid, then ``settle`` seconds more: strace seizes
first and switches the tracee to syscall tracing a moment later. A tracee
blocked in a syscall at attach time is always covered (the interrupted call
restarts as a traced one); the settle time covers a tracee running user code.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import IO

from fdpass_conformance.faults.errors import FaultUnavailable, errno_name, parse_errno
from fdpass_conformance.processes import exec_dies_with_parent

#: strace's bounds for ``when=first..last`` (see ``man strace``).
MAX_FIRST = 65535
MAX_LAST = 65534

_SYSCALL_SET = re.compile(r"^[a-z_][a-z0-9_]*(,[a-z_][a-z0-9_]*)*$")
_CAP_SYS_PTRACE = 19


def _has_cap_sys_ptrace() -> bool:
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> _CAP_SYS_PTRACE & 1)
    except OSError:
        pass
    return False


def _yama_reason() -> str:
    """Why Yama forbids attaching to a non-descendant, or ""."""
    try:
        with open("/proc/sys/kernel/yama/ptrace_scope", encoding="ascii") as fh:
            scope = int(fh.read().strip())
    except (OSError, ValueError):
        return ""
    if scope >= 3:
        return f"kernel.yama.ptrace_scope={scope} forbids ptrace attach"
    if scope >= 1 and not _has_cap_sys_ptrace():
        return (
            f"kernel.yama.ptrace_scope={scope}: strace may attach only to its own descendants "
            "(run as root or set kernel.yama.ptrace_scope=0)"
        )
    return ""


@functools.cache
def available() -> tuple[bool, str]:
    """(True, "") when strace can attach and inject here; else (False, one-line reason).

    Checked once per process: strace on PATH, Yama's ptrace scope, and a real
    injection run with a ``when=first..last`` range (which also catches a
    seccomp policy that forbids ptrace, as in some containers).
    """
    if sys.platform == "darwin":
        return False, "macOS has no strace (use the python layer)"
    if not sys.platform.startswith("linux"):
        return False, f"strace is Linux-only, not available on {sys.platform}"
    exe = shutil.which("strace")
    if exe is None:
        return False, "strace not found on PATH"
    yama = _yama_reason()
    if yama:
        return False, yama
    cmd = [exe, "-qq", "-o", os.devnull, "-e", "trace=getpid"]
    cmd += ["-e", "inject=getpid:error=ENOSYS:when=1..2", "true"]
    try:
        probe = subprocess.run(
            cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"strace probe failed: {exc}"
    if probe.returncode != 0:
        message = " / ".join(probe.stderr.strip().splitlines()) or f"status {probe.returncode}"
        return False, f"strace cannot trace here: {message}"
    return True, ""


def when_expression(after: int, times: int | None) -> str:
    """strace's ``when=`` for "fail calls after+1 .. after+times" (times=None: all from after+1)."""
    first = after + 1
    if times is None:
        return f"{first}+"
    if times == 1:
        return str(first)
    return f"{first}..{after + times}"


def _tracer_pid(pid: int, tid: int | None = None) -> int:
    path = f"/proc/{pid}/status" if tid is None else f"/proc/{pid}/task/{tid}/status"
    with open(path, encoding="ascii", errors="replace") as fh:
        for line in fh:
            if line.startswith("TracerPid:"):
                return int(line.split()[1])
    return 0


def tracer_pid(pid: int) -> int:
    """The pid tracing ``pid`` (0 when none), from ``/proc/PID/status``."""
    return _tracer_pid(pid)


#: Faults whose strace runs (strong references: a fault dropped without detach() is
#: exactly the one whose strace must still be stopped at exit).
_ATTACHED: set[SyscallFault] = set()


@atexit.register
def _detach_all() -> None:
    """A caller that never reached detach() (a test killed by its timeout, say) must not
    leave a running strace behind; PR_SET_PDEATHSIG is not always there to catch it."""
    for fault in list(_ATTACHED):
        with contextlib.suppress(Exception):
            fault.detach()


class SyscallFault:
    """Fail calls ``after+1 .. after+times`` of ``syscall`` in process ``pid`` with ``error``.

    Use it as a context manager (or :meth:`attach`/:meth:`detach`). Entering
    returns once strace really traces the process; leaving detaches it and
    the process keeps running, untraced. :meth:`injected_count` tells how many
    calls were failed. ``times=None`` fails every call from ``after+1`` on.
    """

    def __init__(
        self,
        pid: int,
        syscall: str = "sendmsg",
        error: str | int = "ENOBUFS",
        after: int = 0,
        times: int | None = 1,
        follow_forks: bool = True,
        *,
        attach_timeout: float = 10.0,
        detach_timeout: float = 5.0,
        settle: float = 0.05,
    ) -> None:
        if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
            raise ValueError(f"pid must be a positive int, got {pid!r}")
        if not _SYSCALL_SET.match(syscall):
            raise ValueError(f"syscall must be a name like 'sendmsg' (or 'a,b'), got {syscall!r}")
        self.errno = parse_errno(error)
        if isinstance(after, bool) or not isinstance(after, int) or after < 0:
            raise ValueError(f"after must be an int >= 0, got {after!r}")
        if after + 1 > MAX_FIRST:
            raise ValueError(f"after must be < {MAX_FIRST} (strace's limit), got {after}")
        if times is not None:
            if isinstance(times, bool) or not isinstance(times, int) or times < 1:
                raise ValueError(f"times must be an int >= 1 or None, got {times!r}")
            if after + times > MAX_LAST:
                raise ValueError(
                    f"after + times must be <= {MAX_LAST} (strace's limit), got {after + times}"
                )
        for name, value in (("attach_timeout", attach_timeout), ("detach_timeout", detach_timeout)):
            if not value > 0:
                raise ValueError(f"{name} must be positive, got {value}")
        if settle < 0:
            raise ValueError(f"settle must be >= 0, got {settle}")
        self.pid = pid
        self.syscall = syscall
        self.after = after
        self.times = times
        self.follow_forks = follow_forks
        self.attach_timeout = attach_timeout
        self.detach_timeout = detach_timeout
        self.settle = settle
        self.when = when_expression(after, times)
        self.log_path: str | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._owner = 0  # the pid that started strace: only it may stop strace
        self._stderr: IO[bytes] | None = None
        self._log_text: str | None = None
        self.strace_stderr = ""

    @property
    def strace_pid(self) -> int | None:
        """strace's pid while attached, else None."""
        return self._proc.pid if self._proc is not None else None

    def command(self, log_path: str) -> list[str]:
        """The strace command line, for reports and debugging."""
        exe = shutil.which("strace") or "strace"
        cmd = [exe, "-p", str(self.pid)]
        if self.follow_forks:
            cmd.append("-f")
        spec = f"{self.syscall}:error={errno_name(self.errno)}:when={self.when}"
        cmd += ["-qq", "-o", log_path, "-e", "signal=none", "-e", f"trace={self.syscall}"]
        cmd += ["-e", f"inject={spec}"]
        return cmd

    def attach(self) -> None:
        """Start strace on the pid and return once it traces it; raise if it cannot."""
        if self._proc is not None:
            raise RuntimeError("SyscallFault is already attached")
        ok, why = available()
        if not ok:
            raise FaultUnavailable(f"syscall fault injection unavailable: {why}")
        try:
            current = _tracer_pid(self.pid)
        except FileNotFoundError:
            raise ProcessLookupError(f"no process with pid {self.pid}") from None
        if current:
            raise RuntimeError(f"pid {self.pid} is already traced by pid {current}")
        fd, self.log_path = tempfile.mkstemp(prefix="fdpass-strace-", suffix=".log")
        os.close(fd)
        self._log_text = None
        # Closed in detach(): it lives as long as strace, across attach and detach.
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115
        self._proc = subprocess.Popen(
            self.command(self.log_path),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self._stderr,
            preexec_fn=exec_dies_with_parent(signal.SIGTERM),  # prctl only; no lock taken
        )
        self._owner = os.getpid()
        _ATTACHED.add(self)
        try:
            self._wait_attached()
        except BaseException:
            self.detach()
            raise
        if self.settle:
            time.sleep(self.settle)

    def _wait_attached(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self.attach_timeout
        while True:
            status = self._proc.poll()
            if status is not None:
                raise RuntimeError(
                    f"strace exited with status {status} before attaching to pid {self.pid}: "
                    f"{self._read_stderr() or 'no message'}"
                )
            try:
                if self._all_traced():
                    return
            except FileNotFoundError:
                raise ProcessLookupError(f"pid {self.pid} exited while strace attached") from None
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"strace did not attach to pid {self.pid} within {self.attach_timeout:g}s"
                )
            time.sleep(0.002)

    def _all_traced(self) -> bool:
        assert self._proc is not None
        if _tracer_pid(self.pid) != self._proc.pid:
            return False
        if not self.follow_forks:
            return True
        for tid in os.listdir(f"/proc/{self.pid}/task"):
            with contextlib.suppress(FileNotFoundError):  # a thread that just exited
                if _tracer_pid(self.pid, int(tid)) != self._proc.pid:
                    return False
        return True

    def _read_stderr(self) -> str:
        if self._stderr is None:
            return ""
        self._stderr.seek(0)
        text = self._stderr.read().decode(errors="replace")
        return " / ".join(line.strip() for line in text.splitlines() if line.strip())

    def detach(self) -> None:
        """Stop strace (SIGINT, then SIGKILL past ``detach_timeout``); the tracee runs on.

        Idempotent. Keeps the log text for :meth:`injected_count` and removes
        the log file. strace is SIGKILLed (the kernel then detaches the
        tracee) also when the wait is interrupted, so no exception leaves it
        running. In a forked child this only forgets the parent's strace.
        """
        proc, self._proc = self._proc, None
        _ATTACHED.discard(self)
        if proc is not None and os.getpid() != self._owner:
            self.log_path = None  # the parent's file: it reads and removes it
            if self._stderr is not None:
                self._stderr.close()
                self._stderr = None
            return
        try:
            if proc is not None and proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGINT)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(self.detach_timeout)
        finally:
            try:
                if proc is not None and proc.poll() is None:
                    proc.kill()
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        proc.wait(self.detach_timeout)
            finally:
                self._release_files()

    def _release_files(self) -> None:
        if self._stderr is not None:
            self.strace_stderr = self._read_stderr()
            self._stderr.close()
            self._stderr = None
        if self.log_path is not None:
            self._log_text = self._read_log()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.log_path)
            self.log_path = None

    def _read_log(self) -> str:
        if self.log_path is None:
            return self._log_text or ""
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as fh:
                return fh.read()
        except FileNotFoundError:
            return ""

    def log_text(self) -> str:
        """strace's log so far (while attached strace may still buffer its last lines)."""
        return self._read_log()

    def injected_count(self) -> int:
        """How many calls strace failed: the log lines that end in ``(INJECTED)``."""
        return sum(1 for line in self._read_log().splitlines() if "(INJECTED)" in line)

    def __enter__(self) -> SyscallFault:
        self.attach()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.detach()

    def __repr__(self) -> str:
        return (
            f"SyscallFault(pid={self.pid}, {self.syscall}:error={errno_name(self.errno)}"
            f":when={self.when}, attached={self._proc is not None})"
        )
