"""Defect: ``open_channels`` closes each worker end right away, before any fork.

Seed round 3 #3: ``fclose($streams[1])`` "until workers exist" closes the
worker end, so every ``SCM_RIGHTS`` message goes into the void. Here every
channel's peer is gone from the start: the workers get no channel (their
``accept`` fails with EBADF) and every ``dispatch`` finds no live worker and
closes the connection. No connection is ever served, so each requirement
whose check needs one served connection fails, while the setup, input,
error-path and IPC-object requirements pass. Among SP and FP: SP-09 (no data
flows), SP-10 (no worker serves), SP-11, SP-12, SP-13, SP-16 and SP-20 (their
checks start with a served request), SP-17 (no client served), FP-02, FP-03,
FP-04, FP-05, FP-06, FP-07, FP-08, FP-10, FP-12, FP-13 and FP-14 (likewise).

Among FLT and IPC: FLT-03 (connections during signals are not served),
FLT-04 (a new instance after the failure does not serve), FLT-05 (workers
give up: "workers-alive"), FP-11 (the workers already gave up, so none is
blocked in accept to see EOF), IPC-08 (nothing is served with a one-byte
queue) and IPC-10 (nothing is served after the forked children ended).
"""

from __future__ import annotations

from ._master import PinnedMasterProxy

BREAKS = frozenset(
    {
        "SP-09",
        "SP-10",
        "SP-11",
        "SP-12",
        "SP-13",
        "SP-16",
        "SP-17",
        "SP-20",
        "FP-02",
        "FP-03",
        "FP-04",
        "FP-05",
        "FP-06",
        "FP-07",
        "FP-08",
        "FP-10",
        "FP-11",
        "FP-12",
        "FP-13",
        "FP-14",
        "IPC-08",
        "IPC-10",
        "FLT-03",
        "FLT-04",
        "FLT-05",
    }
)
SEED = "round 3 #3: fclose($streams[1]) closes the worker end, SCM_RIGHTS sends into the void"


class VoidChannelProxy(PinnedMasterProxy):
    def open_channels(self, workers: int) -> None:
        super().open_channels(workers)
        for end in self._worker_ends:
            if end is not None:
                end.close()  # the defect: "closing is cleaner until workers exist"
