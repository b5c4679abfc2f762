"""Defect: ``open_channels`` closes each worker end right away, before any fork.

Seed round 3 #3: ``fclose($streams[1])`` "until workers exist" closes the
worker end, so every ``SCM_RIGHTS`` message goes into the void. Here every
channel's peer is gone from the start: the workers get no channel (their
``accept`` fails with EBADF until they give up) and every ``dispatch`` finds
no live worker and closes the connection.

Root causes: FP-02 (no connection reaches a worker), FP-11 (no worker is
left blocked in ``accept`` to see the master's close as EOF: they gave up)
and FP-03 (blocked: its dispatch raises, nothing is dispatched; the message
names the error). Everything whose check needs a served connection is
blocked by FP-02 (``BLOCKED``), while the setup, input, error-path and
IPC-object requirements pass.
"""

from __future__ import annotations

from reference import MasterProxy

from . import SERVED_CHECKS

BREAKS = frozenset({"FP-02", "FP-11"})
BLOCKED = dict.fromkeys(SERVED_CHECKS | {"FP-03"}, "FP-02")
SEED = "round 3 #3: fclose($streams[1]) closes the worker end, SCM_RIGHTS sends into the void"


class VoidChannelProxy(MasterProxy):
    def open_channels(self, workers: int) -> None:
        super().open_channels(workers)
        for end in self._worker_ends:
            if end is not None:
                end.close()  # the defect: "closing is cleaner until workers exist"
