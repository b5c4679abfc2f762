"""Forking a child that can never outlive the run nor run the parent's teardown.

A child that returns into pytest would run the rest of the session twice; a
child orphaned by a crashed parent would keep ports, queues and ptrace
attachments alive. So each child leaves with ``os._exit``, and on Linux dies
with its parent (``PR_SET_PDEATHSIG``), programs it execs included.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import traceback
import warnings
from collections.abc import Callable

_PR_SET_PDEATHSIG = 1
_IS_LINUX = sys.platform.startswith("linux")
_libc = ctypes.CDLL(None, use_errno=True) if _IS_LINUX else None

#: Exit status of a child whose body raised or could not report.
CRASHED = 70


def die_with_parent(parent_pid: int, status: int = CRASHED) -> None:
    """PR_SET_PDEATHSIG (Linux), then exit with ``status`` if the parent already died."""
    if _libc is not None:
        zero = ctypes.c_ulong(0)
        if _libc.prctl(_PR_SET_PDEATHSIG, ctypes.c_ulong(signal.SIGKILL), zero, zero, zero):
            code = ctypes.get_errno()
            raise OSError(code, f"prctl(PR_SET_PDEATHSIG) failed: {os.strerror(code)}")
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(status)


def exec_dies_with_parent(sig: int = signal.SIGKILL) -> Callable[[], None] | None:
    """A ``preexec_fn`` for ``subprocess``: the program gets ``sig`` when its parent dies.

    Only ``prctl`` runs between fork and exec (safe for threaded callers: it
    takes no lock). None where there is no PR_SET_PDEATHSIG (macOS). The
    signal comes when the *thread* that started the program ends, so start
    long-lived programs from the thread that outlives them.
    """
    if _libc is None:
        return None
    libc = _libc
    parent = os.getpid()

    def preexec() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, ctypes.c_ulong(sig), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(CRASHED)

    return preexec


def quiet_fork() -> int:
    """``os.fork()`` without Python 3.12's warning about forking a threaded process.

    pytest-xdist workers run execnet threads, so every fork here would warn;
    our children never touch locks those threads hold: they reset signals,
    use their own fds and leave with ``os._exit`` or exec.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return os.fork()


def reset_signals() -> None:
    """Back to a fresh interpreter's handlers: pytest's and the test's Python
    handlers (SIGALRM of pytest-timeout, SIGTERM, ...) mean nothing in the child.

    Ignored signals stay ignored: Python itself starts with SIGPIPE ignored, and
    the contract is judged against that.
    """
    with contextlib.suppress(ValueError, OSError):
        signal.set_wakeup_fd(-1)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_SETMASK, set())
    for sig in signal.valid_signals():
        if sig in (signal.SIGKILL, signal.SIGSTOP):
            continue
        try:
            handler = signal.getsignal(sig)
            if sig == signal.SIGINT:
                if handler is not signal.default_int_handler:
                    signal.signal(sig, signal.default_int_handler)
            elif callable(handler):
                signal.signal(sig, signal.SIG_DFL)
        except (ValueError, OSError):
            pass


def flush_std() -> None:
    """Flush before fork so the child starts with empty buffers: what it
    flushes at exit is then its own output, never the parent's again."""
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            if stream is not None:
                stream.flush()
        except Exception:
            pass


def fork_child(body: Callable[[], int], *, new_group: bool = False) -> int:
    """Fork; the child dies with us, resets signals, runs ``body`` and exits with
    its status (CRASHED, traceback on stderr, if it raised). Returns the pid."""
    parent = os.getpid()
    flush_std()
    pid = quiet_fork()
    if pid:
        return pid
    status = CRASHED
    try:
        if new_group:
            os.setpgid(0, 0)
        die_with_parent(parent)
        reset_signals()
        status = body()
    except BaseException:
        with contextlib.suppress(BaseException):
            os.write(2, traceback.format_exc().encode(errors="replace"))
    finally:
        os._exit(status)
