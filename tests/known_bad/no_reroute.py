"""Defect: a dead worker's channel makes ``dispatch`` fail instead of re-routing.

The dead worker is remembered (later dispatches skip it), but the connection
that met its closed channel is closed with an ``OSError`` although other
workers are alive. Breaks FP-08 (the connection is lost) and FP-07 (after a
worker's death, a connection is not served by the surviving workers).

FLT-05 fails as well ("dispatch-outcome": dispatch raises although live
workers remain).
"""

from __future__ import annotations

from reference import MasterProxy

BREAKS = frozenset({"FP-07", "FP-08", "FLT-05"})


class NoRerouteProxy(MasterProxy):
    def _peer_gone(self, index: int, exc: OSError) -> None:
        super()._peer_gone(index, exc)
        raise OSError(exc.errno, f"dispatch: worker {index} is gone: {exc.strerror}") from exc
