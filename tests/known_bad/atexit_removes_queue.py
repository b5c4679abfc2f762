"""Defect: an ``atexit`` hook removes the queue, in whatever process exits normally.

The hook is registered when the queue is made, so every child forked after
that inherits it, and a child that exits through normal interpreter shutdown
removes the master's queue. Breaks IPC-10.
"""

from __future__ import annotations

import atexit
import contextlib
import socket

from fdpass_conformance import sysv
from fdpass_conformance.contract import ProtocolType
from reference import MasterProxy

BREAKS = frozenset({"IPC-10"})
SEED = "round 2 follow-up: missing destructor/cleanup (an atexit hook without owner check)"


class AtexitProxy(MasterProxy):
    def create_socket(
        self, port: int, protocol: ProtocolType | str = ProtocolType.TCP
    ) -> socket.socket:
        had_queue = self._queue is not None
        listener = super().create_socket(port, protocol)
        if not had_queue and self._queue is not None:
            atexit.register(self._remove_at_exit, self._queue.id)
        return listener

    @staticmethod
    def _remove_at_exit(qid: int) -> None:
        with contextlib.suppress(OSError):
            sysv.msgrm(qid)  # the defect: no check that this is the creator
