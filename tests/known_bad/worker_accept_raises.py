"""Defect: a worker's ``accept`` raises a bug of its own (not an OSError) on every call.

The issue "Root causes, not cascades" saw this through the exec adapter: the
program's worker ``accept`` raised, and 27 checks read "worker N crashed",
including the IPC ones whose evidence exists before any worker accepts. Here
the worker unpacks the received message wrongly and raises ``RuntimeError``
after taking the fd, so every connection is lost with the worker.

Root cause: FP-02 (no connection reaches a worker that can use it). FP-11
passes: a worker waits in ``accept`` until a connection arrives, so with no
dispatch it is still blocked there when the master closes, and sees EOF.
What needs a served connection is blocked by FP-02 (``BLOCKED``); the setup,
input and IPC-object checks (IPC-01..IPC-06, IPC-09) are judged and pass.
"""

from __future__ import annotations

import socket

from reference import MasterProxy

from . import SERVED_CHECKS

BREAKS = frozenset({"FP-02"})
BLOCKED = dict.fromkeys(SERVED_CHECKS | {"FP-03"}, "FP-02")


class RaisingWorkerMasterProxy(MasterProxy):
    def accept(self, listener: socket.socket) -> socket.socket:
        conn = super().accept(listener)
        conn.close()
        raise RuntimeError("accept: unpacking the worker message failed (tag mismatch)")
