"""A full fd table held on request, for EMFILE and MSG_CTRUNC made by the kernel.

RLIMIT_NOFILE bounds fd *numbers*, so lowering it is unreliable when a process
has holes in its table; taking every free number (then giving some back) is
the fault that really happens in production.
"""

from __future__ import annotations

import os
from typing import Protocol


class FdTableFiller(Protocol):
    """A full fd table for one process, held until released (see ``Backend.fd_filler``)."""

    def fill(self, keep_free: int = 0) -> int: ...

    def release(self) -> int: ...


class FdFiller:
    def __init__(self) -> None:
        self.held: list[int] = []

    def fill(self, keep_free: int = 0) -> int:
        """Take every free fd number but ``keep_free``; returns how many are held."""
        from ..faults.kernel import fill_fd_table

        self.held += fill_fd_table(keep_free)
        return len(self.held)

    def release(self) -> int:
        held, self.held = self.held, []
        for fd in held:
            os.close(fd)
        return len(held)
