"""What the kernel says about another process's fds, and a full fd table made from outside.

The program's word is not evidence: close-on-exec is a property of one fd in
one process, so it is read from ``/proc/PID/fdinfo/FD`` of the program's own
process, and the fd a reply names is checked against ``/proc/PID/fd/FD``
before it is believed. A "full fd table" for another process is made with
``prlimit``: RLIMIT_NOFILE bounds fd *numbers*, so a soft limit at the
lowest free number refuses every new fd without opening any.
"""

from __future__ import annotations

import itertools
import os
import resource
from collections.abc import Callable

from ..processes import has_ended

#: O_CLOEXEC and O_NONBLOCK as the ``flags:`` line of fdinfo shows them (octal, Linux).
O_CLOEXEC_LINUX = 0o2000000
O_NONBLOCK_LINUX = 0o4000


def fd_target(pid: int, fd: int) -> str | None:
    """What fd ``fd`` of ``pid`` refers to (``socket:[INODE]``), or None if it is not open."""
    try:
        return os.readlink(f"/proc/{pid}/fd/{fd}")
    except OSError:
        return None


def socket_target(fd: int) -> str:
    """The ``/proc`` link text of one of our own socket fds."""
    return f"socket:[{os.fstat(fd).st_ino}]"


def fd_flags(pid: int, fd: int) -> dict[str, bool] | None:
    """{"cloexec", "nonblock"} of fd ``fd`` in process ``pid``; None if it is not open."""
    try:
        with open(f"/proc/{pid}/fdinfo/{fd}", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("flags:"):
                    flags = int(line.split()[1], 8)
                    return {
                        "cloexec": bool(flags & O_CLOEXEC_LINUX),
                        "nonblock": bool(flags & O_NONBLOCK_LINUX),
                    }
    except OSError:
        return None
    return None


def process_end(pid: int) -> str | None:
    """None while ``pid`` runs; "it exited" once it is gone or a zombie (not our child)."""
    return "it exited" if has_ended(pid) else None


class RemoteFdFiller:
    """``FdFiller`` for another process: fill(keep_free) leaves it room for exactly
    ``keep_free`` new fds, release() gives the room back (both through prlimit).

    Same interface as ``harness.fdtable.FdFiller``; ``pid_of`` is asked at
    ``fill`` time, so the filler can be made before the process exists.
    """

    def __init__(self, pid_of: Callable[[], int]) -> None:
        self._pid_of = pid_of
        self._saved: tuple[int, tuple[int, int]] | None = None

    def fill(self, keep_free: int = 0) -> int:
        """Lower the soft limit to the ``keep_free``-th free fd number; returns that limit."""
        pid = self._pid_of()
        used = {int(name) for name in os.listdir(f"/proc/{pid}/fd")}
        free = (n for n in itertools.count() if n not in used)
        limit = next(itertools.islice(free, keep_free, None))
        prev = resource.prlimit(pid, resource.RLIMIT_NOFILE)
        if self._saved is None:
            self._saved = (pid, prev)
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (limit, prev[1]))
        return limit

    def release(self) -> int:
        """Put the soft limit back; 1 if there was something to undo, else 0."""
        saved, self._saved = self._saved, None
        if saved is None:
            return 0
        pid, prev = saved
        try:
            resource.prlimit(pid, resource.RLIMIT_NOFILE, prev)
        except ProcessLookupError:
            return 0
        return 1
