"""Kernel-level faults: resource limits, full fd tables and signals, for any language.

Why this layer: the conditions that matter most on the fd-passing path
(EMFILE from ``accept``/``socket``/``socketpair``, ``MSG_CTRUNC`` when a
worker's fd table is full, a worker killed or stopped mid-dispatch) can be
produced for real by the kernel, from outside the process, without patching
anything. ``RLIMIT_NOFILE`` bounds fd *numbers*: a process whose every number
below the soft limit is taken gets EMFILE, and a ``recvmsg`` carrying
SCM_RIGHTS gets ``MSG_CTRUNC`` with the passed fd dropped by the kernel.

Linux changes another process's limit with ``prlimit(2)``
(``resource.prlimit``); macOS has no such call, so there only the calling
process can lower its own limit.
"""

from __future__ import annotations

import contextlib
import errno
import os
import resource
import signal
import sys
from collections.abc import Iterable

from fdpass_conformance.faults.errors import FaultUnavailable

#: fill_fd_table refuses to open more fds than this (lower the limit first).
DEFAULT_MAX_FDS = 1 << 20


def available() -> tuple[bool, str]:
    """(True, "") on Linux; elsewhere (True, what is restricted): signals and own limits work."""
    if sys.platform.startswith("linux"):
        return True, ""
    return True, f"set_nofile_limit works on the calling process only ({sys.platform}: no prlimit)"


def _check_pid(pid: int) -> None:
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
        raise ValueError(f"pid must be a positive int, got {pid!r}")


def _check_limit(soft: int, hard: int) -> None:
    if isinstance(soft, bool) or not isinstance(soft, int) or soft < 0:
        raise ValueError(f"soft limit must be an int >= 0, got {soft!r}")
    if hard != resource.RLIM_INFINITY and soft > hard:
        raise ValueError(f"soft limit {soft} exceeds the hard limit {hard}")


def _rlimit_error(exc: OSError, pid: int) -> OSError:
    if exc.errno == errno.ESRCH:
        return ProcessLookupError(errno.ESRCH, f"RLIMIT_NOFILE of pid {pid}: no such process")
    if exc.errno == errno.EPERM:
        return PermissionError(errno.EPERM, f"RLIMIT_NOFILE of pid {pid}: not permitted")
    return exc


def get_nofile_limit(pid: int) -> tuple[int, int]:
    """(soft, hard) RLIMIT_NOFILE of ``pid`` (any pid on Linux, our own elsewhere)."""
    _check_pid(pid)
    if sys.platform == "linux":
        try:
            return resource.prlimit(pid, resource.RLIMIT_NOFILE)
        except OSError as exc:
            raise _rlimit_error(exc, pid) from None
    _require_self(pid)
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def _require_self(pid: int) -> None:
    if pid != os.getpid():
        raise FaultUnavailable(
            f"changing RLIMIT_NOFILE of another process (pid {pid}) is unavailable on "
            f"{sys.platform} (no prlimit): the process must lower its own limit"
        )


def set_nofile_limit(pid: int, soft: int) -> tuple[int, int]:
    """Set the soft RLIMIT_NOFILE of ``pid`` to ``soft``; return the previous (soft, hard).

    The hard limit is left alone, so :func:`restore_nofile_limit` can always
    raise the soft one back. Already open fds above the new limit stay open;
    only new fds are refused (EMFILE) while every number below it is taken.
    """
    _check_pid(pid)
    if sys.platform == "linux":
        try:
            prev = resource.prlimit(pid, resource.RLIMIT_NOFILE)
            _check_limit(soft, prev[1])
            resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, prev[1]))
        except OSError as exc:
            raise _rlimit_error(exc, pid) from None
        return prev
    _require_self(pid)
    prev = resource.getrlimit(resource.RLIMIT_NOFILE)
    _check_limit(soft, prev[1])
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, prev[1]))
    return prev


def restore_nofile_limit(pid: int, prev: tuple[int, int]) -> None:
    """Put back the (soft, hard) pair that :func:`set_nofile_limit` returned."""
    _check_pid(pid)
    if sys.platform == "linux":
        try:
            resource.prlimit(pid, resource.RLIMIT_NOFILE, prev)
        except OSError as exc:
            raise _rlimit_error(exc, pid) from None
        return
    _require_self(pid)
    resource.setrlimit(resource.RLIMIT_NOFILE, prev)


def kill(pid: int, sig: int = signal.SIGKILL) -> None:
    """Send ``sig`` (SIGKILL by default) to ``pid``: a worker that dies mid-dispatch."""
    _check_pid(pid)
    os.kill(pid, sig)


def stop(pid: int) -> None:
    """SIGSTOP ``pid``: a worker that stops reading its channel (the kernel queues, then blocks)."""
    _check_pid(pid)
    os.kill(pid, signal.SIGSTOP)


def cont(pid: int) -> None:
    """SIGCONT ``pid``: resume a process stopped by :func:`stop`."""
    _check_pid(pid)
    os.kill(pid, signal.SIGCONT)


def fill_fd_table(keep_free: int = 0, *, max_fds: int = DEFAULT_MAX_FDS) -> list[int]:
    """Take every free fd number of the calling process below RLIMIT_NOFILE but ``keep_free``.

    Returns the fds taken (close them with :func:`close_fds`). With
    ``keep_free=0`` the next ``socket``/``accept`` fails with EMFILE and a
    ``recvmsg`` with SCM_RIGHTS reports ``MSG_CTRUNC``; the fds are dups of
    one ``/dev/null`` fd, close-on-exec. A soft limit above ``max_fds`` is a
    ValueError: lower it with :func:`set_nofile_limit` first instead of
    opening a million fds.
    """
    if isinstance(keep_free, bool) or not isinstance(keep_free, int) or keep_free < 0:
        raise ValueError(f"keep_free must be an int >= 0, got {keep_free!r}")
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft > max_fds:
        raise ValueError(
            f"RLIMIT_NOFILE soft limit is {soft} (> {max_fds}): lower it first with "
            "set_nofile_limit(os.getpid(), N)"
        )
    fds: list[int] = []
    try:
        try:
            fds.append(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
        except OSError as exc:
            if exc.errno != errno.EMFILE:
                raise
            return fds
        while True:
            try:
                fds.append(os.dup(fds[0]))  # os.dup gives a non-inheritable fd
            except OSError as exc:
                if exc.errno != errno.EMFILE:
                    raise
                break
    except BaseException:
        close_fds(fds)
        raise
    fds.sort()
    for _ in range(min(keep_free, len(fds))):
        os.close(fds.pop())
    return fds


def close_fds(fds: Iterable[int]) -> None:
    """Close fds taken by :func:`fill_fd_table`, ignoring ones already closed."""
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)
