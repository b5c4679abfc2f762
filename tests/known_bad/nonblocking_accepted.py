"""Defect: ``accept()`` hands out non-blocking connections ("for the event loop").

Breaks SP-20: the accepted socket has O_NONBLOCK set, while the contract
promises a blocking one. The harness's worker still serves (it waits with
``select`` before reading), so nothing else fails.
"""

from __future__ import annotations

import socket

from reference import ForkSharedProxy

BREAKS = frozenset({"SP-20"})


class NonBlockingAcceptProxy(ForkSharedProxy):
    def accept(self, listener: socket.socket) -> socket.socket:
        conn = super().accept(listener)
        conn.setblocking(False)  # the defect
        return conn
