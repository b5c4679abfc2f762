"""The exec backend: the harness reaches a program's processes through the adapter.

The harness's master and workers stay Python processes; the implementation's
master and workers are the program's. Each harness worker drives one program
worker, so spawning worker ``i`` is two forks (the program's, then ours), and
every piece of evidence (pids, fd flags, fd tables) is the program's.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable, Iterator
from typing import Any

from ..harness.backends import Backend, backend_for
from ..harness.fdtable import FdTableFiller
from .proxy import ExecFactory, ExecProxy, RemoteSocket


def _proxy(proxy: object) -> ExecProxy:
    if not isinstance(proxy, ExecProxy):
        raise TypeError(f"the exec backend drives ExecProxy objects, not {type(proxy).__name__}")
    return proxy


class ExecBackend:
    """The backend of every proxy an ``ExecFactory`` makes."""

    out_of_process = True

    def __init__(self, factory: ExecFactory) -> None:
        self._factory = factory

    def master_pid(self, proxy: object) -> int:
        return _proxy(proxy).program_master_pid()

    @contextlib.contextmanager
    def spawn_worker(self, proxy: object, index: int) -> Iterator[Callable[[int], int]]:
        """The program's master forks worker ``index`` first; the harness process forked
        inside drives it, and whatever its pid, the worker is the program's."""
        exec_proxy = _proxy(proxy)
        pid = exec_proxy.spawn_program_worker(index)
        try:
            yield lambda _driver: pid
        finally:
            exec_proxy.program_worker_forked(index)

    def fd_filler(self, proxy: object) -> FdTableFiller:
        """The table of the program process this process speaks to (its master, or the
        worker this driver drives), limited from outside with prlimit."""
        return _proxy(proxy).program_fd_filler()

    def describe_socket(self, sock: socket.socket) -> dict[str, Any]:
        return sock.impl_view() if isinstance(sock, RemoteSocket) else {}

    def child_reaped(self, pid: int, status: int) -> None:
        """A program master is a child of the harness's master, which may reap it first;
        its Launch then finds the status in the factory's record."""
        self._factory.reaps[pid] = status


@backend_for.register
def _exec_backend(factory: ExecFactory) -> Backend:
    return ExecBackend(factory)
