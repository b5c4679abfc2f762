"""Defect: ``close()`` removes the queue in whichever process calls it.

Seed round 2 follow-up asks for a destructor/cleanup; done naively, the
cleanup also runs in every worker. Breaks FP-07 (a worker that exits through
``close()`` removes the master's queue) and IPC-10 (a forked process removes
the master's IPC object).
"""

from __future__ import annotations

import contextlib

from fdpass_conformance import sysv
from reference import MasterProxy

BREAKS = frozenset({"FP-07", "IPC-10"})
SEED = "round 2 follow-up: missing destructor/cleanup (done without an owner check)"


class AnyProcessRemovesProxy(MasterProxy):
    def close(self) -> None:
        queue = self._queue
        if queue is not None and not queue.removed:
            queue.removed = True
            with contextlib.suppress(OSError):
                sysv.msgrm(queue.id)  # the defect: no check that this is the creator
        super().close()
