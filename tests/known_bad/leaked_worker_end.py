"""Defect: the master never drops its copies of the worker ends.

Seed round 1 #1: ``$streams[1]`` from ``stream_socket_pair`` was never stored or
closed. Breaks FP-06 (after the first dispatch the master still holds every
worker-side end). Because the master keeps the peer of each channel open, a
dead worker's channel never reports EPIPE and silently absorbs the
descriptors sent to it, exactly the failure FP-06 exists to prevent, so
FP-07 (connections after a worker's death are lost instead of reaching the
survivors), FP-08 (the connection sent to the dead worker is lost) and FP-09
(with every worker dead, dispatch "succeeds" and the client hangs) fail too.

FLT-05 fails as well ("dispatch-outcome": after a worker is killed, dispatch
returns the dead worker's index).

May break IPC-10 (``MAY_BREAK``): after two workers exited, a connection that
falls back to round-robin (no idle token posted yet) can go to an exited
worker's channel, which the master still keeps open, and be lost; whether one
does is a race (it failed in some corpus runs and passed in others).
"""

from __future__ import annotations

from reference import MasterProxy

BREAKS = frozenset({"FP-06", "FP-07", "FP-08", "FP-09", "FLT-05"})
MAY_BREAK = frozenset({"IPC-10"})
SEED = "round 1 #1: $streams[1] from stream_socket_pair leaked, never stored or closed"


class LeakedWorkerEndProxy(MasterProxy):
    def _seal(self) -> None:
        self._sealed = True  # the defect: the worker ends stay open in the master
