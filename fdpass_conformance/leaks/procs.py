"""Child processes: finding the ones a proxy left behind, and ending them.

A worker that outlives its master's ``close()``, or a zombie nobody reaped,
is a leak like an fd: it holds a pid, may hold inherited fds and keeps a
port's connections alive. psutil is used because walking the process tree
portably (Linux and macOS) has no stdlib equivalent.

Processes are identified by pid *and* start time, so a pid the kernel
recycled for an unrelated process is not mistaken for the one seen before.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass

import psutil  # type: ignore[import-untyped, unused-ignore]


@dataclass(frozen=True)
class ProcessInfo:
    """A process as seen at one moment; (pid, create_time) is its identity."""

    pid: int
    ppid: int
    name: str
    status: str
    create_time: float

    def describe(self) -> str:
        """One line such as ``process 1234 (python3, parent 1200, sleeping)``."""
        return f"process {self.pid} ({self.name}, parent {self.ppid}, {self.status})"


def _info(proc: psutil.Process) -> ProcessInfo:
    with proc.oneshot():
        return ProcessInfo(
            int(proc.pid),
            int(proc.ppid()),
            str(proc.name()),
            str(proc.status()),
            float(proc.create_time()),
        )


def child_processes(
    pid: int, recursive: bool = True, include_zombies: bool = True
) -> list[ProcessInfo]:
    """The children (``recursive``: all descendants) of ``pid``, by pid.

    Zombies are included by default: an exited worker that was never reaped
    is itself a defect of the master. Raises ProcessLookupError if ``pid``
    does not exist; children that exit while being inspected are left out.
    """
    try:
        children = psutil.Process(pid).children(recursive=recursive)
    except psutil.NoSuchProcess:
        raise ProcessLookupError(f"no process with pid {pid}") from None
    found: list[ProcessInfo] = []
    for child in children:
        try:
            info = _info(child)
        except psutil.NoSuchProcess:
            continue
        if include_zombies or info.status != psutil.STATUS_ZOMBIE:
            found.append(info)
    return sorted(found, key=lambda info: info.pid)


def child_pids(pid: int, recursive: bool = True, include_zombies: bool = True) -> list[int]:
    """The pids of :func:`child_processes`, sorted."""
    return [info.pid for info in child_processes(pid, recursive, include_zombies)]


def is_same_process(info: ProcessInfo) -> bool:
    """Whether ``info.pid`` still names the process ``info`` was taken from."""
    try:
        return float(psutil.Process(info.pid).create_time()) == info.create_time
    except psutil.NoSuchProcess:
        return False


def kill_tree(pids: Iterable[int], deadline: float = 5.0) -> list[int]:
    """SIGKILL ``pids`` and all their descendants, reap what can be reaped.

    ``deadline`` is the time budget in seconds; the call never blocks longer
    (no blocking ``waitpid``). Returns the pids still alive when it ran out,
    e.g. a process stuck in uninterruptible sleep; a zombie whose parent is
    another process counts as dead, since only that parent can reap it.

    The tree is frozen with SIGSTOP before anything is killed, so a parent
    cannot fork a child between the listing and the kill; this process and
    pid 1 are never signalled.
    """
    end = time.monotonic() + max(deadline, 0.0)
    me = os.getpid()
    targets: list[int] = []
    pending = [pid for pid in pids if pid > 1 and pid != me]
    while pending:  # stop, then list the (now frozen) children, until nothing new
        fresh = [pid for pid in dict.fromkeys(pending) if pid not in targets]
        targets.extend(fresh)
        for pid in fresh:
            _signal(pid, signal.SIGSTOP)
        pending = []
        for pid in fresh:
            with contextlib.suppress(ProcessLookupError):
                pending.extend(p for p in child_pids(pid) if p > 1 and p != me)
        if time.monotonic() >= end:  # out of time: kill what is known, unfrozen or not
            targets.extend(pid for pid in dict.fromkeys(pending) if pid not in targets)
            break
    for pid in targets:
        _signal(pid, signal.SIGKILL)
    alive = list(targets)
    while alive:
        alive = [pid for pid in alive if not _gone(pid)]
        if not alive or time.monotonic() >= end:
            break
        time.sleep(0.01)
    return alive


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def _gone(pid: int) -> bool:
    """Dead and, if it was our child, reaped."""
    try:
        reaped, _ = os.waitpid(pid, os.WNOHANG)
        if reaped == pid:
            return True
    except ChildProcessError:  # not our child: we can only watch it
        pass
    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE) and not _is_child(pid)
    except psutil.NoSuchProcess:
        return True


def _is_child(pid: int) -> bool:
    try:
        return int(psutil.Process(pid).ppid()) == os.getpid()
    except psutil.NoSuchProcess:
        return False
