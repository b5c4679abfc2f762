"""What differs between an implementation run in the harness's processes and one that
runs elsewhere (a program behind the exec adapter): one declared interface.

The master and worker roles are the same code for every implementation; where
the processes that hold the evidence, fork the workers or own the fd table are
not the harness's own, they ask the backend, and only the backend.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, Protocol

from ..fdtable import FdTableFiller


class Backend(Protocol):
    """How the harness reaches the processes that implement a proxy."""

    #: The implementation's master and workers are processes of their own (a program),
    #: not the harness's: evidence is read from them, and Python-level faults cannot apply.
    out_of_process: bool

    def master_pid(self, proxy: object) -> int:
        """The process that plays the master of ``proxy``, as the evidence sees it.

        Asked in the harness's master; for a program this starts it if needed.
        """
        ...

    def spawn_worker(
        self, proxy: object, index: int
    ) -> AbstractContextManager[Callable[[int], int]]:
        """Wrap the fork of the harness process that is (or drives) worker ``index``.

        Entered before that fork, left after it in the parent; yields the map
        from the forked process's pid to the pid of the implementation's worker.
        """
        ...

    def fd_filler(self, proxy: object) -> FdTableFiller:
        """Fills the fd table of the implementation's process this process stands for."""
        ...

    def describe_socket(self, sock: socket.socket) -> dict[str, Any]:
        """Facts about ``sock`` as the implementation's own process holds it (pid, fd
        flags); they override what the harness reads from its own copy."""
        ...

    def child_reaped(self, pid: int, status: int) -> None:
        """The harness's master reaped ``pid`` (``waitpid(-1)`` takes any child): a backend
        that started that child itself learns here how it ended."""
        ...
