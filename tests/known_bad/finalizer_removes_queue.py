"""Defect: a finalizer (``__del__``) removes the queue, in whatever process runs it.

Seed round 2 follow-up asks for a destructor; in a forking server it also runs
in every forked child that drops the proxy. Breaks IPC-10 (a forked child
that drops the proxy removes the master's queue). Workers leave with
``os._exit`` here, so only IPC-10's forked non-worker child shows it.
"""

from __future__ import annotations

import contextlib

from fdpass_conformance import sysv
from reference import MasterProxy

BREAKS = frozenset({"IPC-10"})
SEED = "round 2 follow-up: missing destructor/cleanup (a destructor without owner check)"


class FinalizerProxy(MasterProxy):
    def __del__(self) -> None:
        queue = self._queue
        if queue is not None and not queue.removed:
            with contextlib.suppress(OSError):
                sysv.msgrm(queue.id)  # the defect: no check that this is the creator
