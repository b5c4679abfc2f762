"""Defect: ``create_socket`` returns a non-blocking listener.

Breaks SP-03: the listener has O_NONBLOCK set. The master's own dispatch still
works (it waits with ``select`` before ``accept``), so nothing else fails; but
any other process that uses the listener as returned gets BlockingIOError.
"""

from __future__ import annotations

import socket

from fdpass_conformance.contract import ProtocolType
from reference import MasterProxy

BREAKS = frozenset({"SP-03"})


class NonBlockingListenerProxy(MasterProxy):
    def create_socket(
        self, port: int, protocol: ProtocolType | str = ProtocolType.TCP
    ) -> socket.socket:
        listener = super().create_socket(port, protocol)
        listener.setblocking(False)  # the defect: "the master polls it anyway"
        return listener
