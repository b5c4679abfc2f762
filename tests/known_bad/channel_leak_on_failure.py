"""Defect: when ``open_channels`` fails midway, the pairs made so far stay open.

The queue is removed on the error path, but the channel ends created before
the failing ``socketpair`` are not closed. Breaks FLT-04 (a socketpair failure
leaks fds) and IPC-03 (a failure midway through ``open_channels`` keeps the
fds acquired so far). Seed round 3 follow-up: partial failure leaks the
earlier resources.
"""

from __future__ import annotations

import socket

from reference import MasterProxy

BREAKS = frozenset({"FLT-04", "IPC-03"})
SEED = "round 3 follow-up: partial failure leaks earlier resources (no try/finally)"


class PairLeakProxy(MasterProxy):
    def __init__(self, host: str = "127.0.0.1") -> None:
        super().__init__(host)
        self._made: list[tuple[socket.socket, socket.socket]] = []

    def _abandon_channels(self, pairs: list[tuple[socket.socket, socket.socket]]) -> None:
        self._made.extend(pairs)  # the defect: kept, never closed
        self._remove_queue()
