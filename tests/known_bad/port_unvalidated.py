"""Defect: the port is not validated up front; ``bind()`` is left to reject it.

Breaks SP-07: ``bind`` does raise ``OverflowError``/``TypeError`` for a bad
port, but only after the socket exists, and the cleanup only handles
``OSError``, so every rejected port leaks a socket.
"""

from __future__ import annotations

import socket

from fdpass_conformance.contract import ProtocolType
from reference import ForkSharedProxy
from reference.listener import open_listener, validate_protocol

BREAKS = frozenset({"SP-07"})


class PortUnvalidatedProxy(ForkSharedProxy):
    def create_socket(
        self, port: int, protocol: ProtocolType | str = ProtocolType.TCP
    ) -> socket.socket:
        self.protocol = validate_protocol(protocol)
        # The defect: no validate_port(port); open_listener closes only on OSError.
        listener = open_listener(self.host, port)
        self._listeners.append(listener)
        return listener
