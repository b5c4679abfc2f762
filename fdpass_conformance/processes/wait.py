"""Waiting for children with a deadline, killing process trees, naming how a child ended.

``os.waitpid`` has no timeout, so waiting is a ``WNOHANG`` poll with a short
back-off; a child past its deadline gets ``SIGKILL`` and is reaped, so no
zombie and no stray process survives a test. Wait statuses are described
here and only here, so that every report says "killed by SIGPIPE" the same way.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterable

import psutil  # type: ignore[import-untyped, unused-ignore]


def exit_code(waitstatus: int) -> int:
    """The exit code, or minus the signal number, as ``subprocess`` reports it."""
    if os.WIFSIGNALED(waitstatus):
        return -os.WTERMSIG(waitstatus)
    if os.WIFEXITED(waitstatus):
        return os.WEXITSTATUS(waitstatus)
    return -1  # pragma: no cover - stopped children are not reported without WUNTRACED


def describe_exit(code: int | None) -> str:
    """``exit status 3``, ``killed by SIGKILL``: how a child with this :func:`exit_code` ended.

    None stands for a status that someone else reaped (a ``waitpid(-1)`` loop).
    """
    if code is None:
        return "its exit status was collected elsewhere"
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
        return f"killed by signal {-code}"
    return f"exit status {code}"


def describe_status(waitstatus: int) -> str:
    """:func:`describe_exit` of a raw ``waitpid`` status."""
    return describe_exit(exit_code(waitstatus))


def _state(pid: int) -> str | None:
    """psutil's status of ``pid``, None once it is gone (reaped, or never ours to see)."""
    try:
        return str(psutil.Process(pid).status())
    except psutil.NoSuchProcess:
        return None


def is_zombie(pid: int) -> bool:
    """``pid`` has ended and its parent has not reaped it yet."""
    return _state(pid) == psutil.STATUS_ZOMBIE


def has_ended(pid: int) -> bool:
    """``pid`` runs no more: gone, or a zombie. A zombie has no fds and no namespaces
    left, so evidence read from it would describe nothing; and only its parent, which
    may not be us (an exec program's worker), can reap it."""
    return _state(pid) in (None, psutil.STATUS_ZOMBIE)


def try_reap(pid: int) -> int | None:
    """Reap ``pid`` if it has ended; return its :func:`exit_code`, else None."""
    try:
        done, waitstatus = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return None
    if done == 0:
        return None
    return exit_code(waitstatus)


def wait_pid(pid: int, timeout: float, *, kill: bool = True) -> int:
    """Wait at most ``timeout`` seconds for child ``pid`` and return its :func:`exit_code`.

    Past the deadline the child is killed (``SIGKILL``) and reaped when ``kill``
    is true, then TimeoutError is raised; with ``kill=False`` it is left running
    and TimeoutError is raised. A pid that is not our child raises
    ChildProcessError at once.
    """
    return exit_code(wait_status(pid, timeout, kill=kill))


def wait_status(pid: int, timeout: float, *, kill: bool = True) -> int:
    """:func:`wait_pid`, returning the raw ``waitpid`` status (for callers that test
    it with ``os.WIFSIGNALED`` and friends)."""
    deadline = time.monotonic() + timeout
    delay = 0.0005
    while True:
        done, waitstatus = os.waitpid(pid, os.WNOHANG)
        if done:
            return waitstatus
        if time.monotonic() >= deadline:
            break
        time.sleep(delay)
        delay = min(delay * 2, 0.02)
    if kill:
        kill_and_reap(pid)
        raise TimeoutError(f"child {pid} did not exit within {timeout:g}s; killed it")
    raise TimeoutError(f"child {pid} did not exit within {timeout:g}s")


def kill_and_reap(pid: int, timeout: float = 5.0) -> int | None:
    """SIGKILL child ``pid`` and reap it; return its exit code (None if it could not be reaped).

    A process in uninterruptible sleep can outlive SIGKILL for a while; after
    ``timeout`` we stop waiting rather than hang (the zombie is reaped later by
    whoever waits for it, or by init once we exit).
    """
    signal_quietly(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while True:
        try:
            done, waitstatus = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return None
        if done:
            return exit_code(waitstatus)
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.005)


def kill_tree(pids: Iterable[int], deadline: float = 5.0) -> list[int]:
    """SIGKILL ``pids`` and all their descendants, reap what can be reaped.

    ``deadline`` is the time budget in seconds; the call never blocks longer
    (no blocking ``waitpid``). Returns the pids still alive when it ran out,
    e.g. a process stuck in uninterruptible sleep; a zombie whose parent is
    another process counts as dead, since only that parent can reap it.

    The tree is frozen with SIGSTOP before anything is killed, so a parent
    cannot fork a child between the listing and the kill; this process and
    pid 1 are never signalled. psutil, because walking a process tree has no
    portable stdlib equivalent (Linux and macOS).
    """
    end = time.monotonic() + max(deadline, 0.0)
    me = os.getpid()
    targets: list[int] = []
    pending = [pid for pid in pids if pid > 1 and pid != me]
    while pending:  # stop, then list the (now frozen) children, until nothing new
        fresh = [pid for pid in dict.fromkeys(pending) if pid not in targets]
        targets.extend(fresh)
        for pid in fresh:
            signal_quietly(pid, signal.SIGSTOP)
        pending = []
        for pid in fresh:
            pending.extend(p for p in _descendants(pid) if p > 1 and p != me)
        if time.monotonic() >= end:  # out of time: kill what is known, unfrozen or not
            targets.extend(pid for pid in dict.fromkeys(pending) if pid not in targets)
            break
    for pid in targets:
        signal_quietly(pid, signal.SIGKILL)
    alive = list(targets)
    while alive:
        alive = [pid for pid in alive if not _gone(pid)]
        if not alive or time.monotonic() >= end:
            break
        time.sleep(0.01)
    return alive


def signal_quietly(pid: int, sig: int) -> None:
    """``os.kill`` that ignores a process already gone (or no longer ours to signal)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def _descendants(pid: int) -> list[int]:
    try:
        return [int(child.pid) for child in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _gone(pid: int) -> bool:
    """Dead and, if it was our child, reaped."""
    try:
        reaped, _ = os.waitpid(pid, os.WNOHANG)
        if reaped == pid:
            return True
    except ChildProcessError:  # not our child: we can only watch it
        pass
    try:
        proc = psutil.Process(pid)
        return bool(proc.status() == psutil.STATUS_ZOMBIE) and int(proc.ppid()) != os.getpid()
    except psutil.NoSuchProcess:
        return True
