"""Defect: each worker forks a child per connection, and the child serves it.

An inetd habit carried into a pre-fork server: ``accept`` forks after taking
the connection; the parent closes its copy and goes back to waiting, the
child returns the connection, serves it and exits at its next ``accept``.
The connection is served, but not by a worker: SP-10 (served by a process
that is neither the master nor one of the workers), and FLT-05's
"answers-match-clients" invariant, which checks the same of every answer.
It replaces, as SP-10's known-bad proxy, ``fds_into_the_void``, whose SP-10
is now blocked by FP-02 (nothing is served there at all).
"""

from __future__ import annotations

import contextlib
import os
import socket

from fdpass_conformance.reference import ForkSharedProxy

BREAKS = frozenset({"SP-10", "FLT-05"})


class ForkPerConnectionProxy(ForkSharedProxy):
    def __init__(self, host: str = "127.0.0.1") -> None:
        super().__init__(host)
        self._server_pid: int | None = None

    def accept(self, listener: socket.socket) -> socket.socket:
        if self._server_pid is not None and os.getpid() != self._server_pid:
            os._exit(0)  # a per-connection child is done after its one connection
        self._server_pid = os.getpid()
        while True:
            conn = super().accept(listener)
            if os.fork() == 0:
                return conn  # the defect: the child serves
            conn.close()
            with contextlib.suppress(ChildProcessError):
                while os.waitpid(-1, os.WNOHANG)[0]:
                    pass
