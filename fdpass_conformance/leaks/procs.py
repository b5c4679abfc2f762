"""Child processes: finding the ones a proxy left behind.

A worker that outlives its master's ``close()``, or a zombie nobody reaped,
is a leak like an fd: it holds a pid, may hold inherited fds and keeps a
port's connections alive. psutil is used because walking the process tree
portably (Linux and macOS) has no stdlib equivalent. Ending them is
``processes.kill_tree``'s job.

Processes are identified by pid *and* start time, so a pid the kernel
recycled for an unrelated process is not mistaken for the one seen before.
"""

from __future__ import annotations

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
