"""Defect: a worker keeps its inherited copy of the master's listener.

Issue 15 found it in a C proxy written from the adapter docs alone: the
worker closed the master's channel ends after the fork, but not the
listening socket, so every worker held the port open. Nothing else shows it
while the master runs: connections are still accepted only by the master.
But after the master's ``close()`` the port stays bound for as long as a
worker lives. Breaks FP-17 only.
"""

from __future__ import annotations

import socket

from reference import MasterProxy

BREAKS = frozenset({"FP-17"})


class ListenerKeepingProxy(MasterProxy):
    def enter_worker(self, index: int) -> None:
        # The defect: "the worker does not use it anyway", so its copy is never closed.
        kept = [s.dup() for s in self._listeners if s.fileno() >= 0]
        try:
            super().enter_worker(index)
        except BaseException:  # a refused call closes nothing and keeps nothing (FP-15/16)
            for sock in kept:
                sock.close()
            raise
        self._kept: list[socket.socket] = kept
