"""Defect: ``create_socket`` ignores the port it is given and binds an ephemeral one.

Breaks SP-04 (an explicit free port is not honoured) and, as a consequence,
SP-08 (a port in use raises nothing, because the proxy never tries that port).
"""

from __future__ import annotations

import socket

from fdpass_conformance.contract import ProtocolType
from reference import ForkSharedProxy
from reference.listener import open_listener, validate_port, validate_protocol

BREAKS = frozenset({"SP-04", "SP-08"})


class PortIgnoredProxy(ForkSharedProxy):
    def create_socket(
        self, port: int, protocol: ProtocolType | str = ProtocolType.TCP
    ) -> socket.socket:
        validate_port(port)
        self.protocol = validate_protocol(protocol)
        listener = open_listener(self.host, 0)  # the defect: a leftover test shortcut
        self._listeners.append(listener)
        return listener
