"""The backend of a Python implementation: the harness's processes are its processes."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Callable, Iterator
from typing import Any

from ..fdtable import FdFiller, FdTableFiller


def _same(pid: int) -> int:
    return pid


class InProcessBackend:
    """The harness's master and workers run the implementation themselves."""

    out_of_process = False

    def master_pid(self, proxy: object) -> int:
        return os.getpid()

    @contextlib.contextmanager
    def spawn_worker(self, proxy: object, index: int) -> Iterator[Callable[[int], int]]:
        yield _same

    def fd_filler(self, proxy: object) -> FdTableFiller:
        return FdFiller()

    def describe_socket(self, sock: socket.socket) -> dict[str, Any]:
        return {}

    def child_reaped(self, pid: int, status: int) -> None:
        """Every child of the master is the harness's: nobody else waits for it."""
