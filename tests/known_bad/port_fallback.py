"""Defect: a port in use silently falls back to an ephemeral port.

Breaks SP-08: instead of ``OSError(EADDRINUSE)`` the caller gets a listener on
some other port. A free port is still honoured, so SP-04 passes.
"""

from __future__ import annotations

import errno
import socket

from fdpass_conformance.contract import ProtocolType
from reference import ForkSharedProxy
from reference.listener import open_listener, validate_port, validate_protocol

BREAKS = frozenset({"SP-08"})


class PortFallbackProxy(ForkSharedProxy):
    def create_socket(
        self, port: int, protocol: ProtocolType | str = ProtocolType.TCP
    ) -> socket.socket:
        port = validate_port(port)
        self.protocol = validate_protocol(protocol)
        try:
            listener = open_listener(self.host, port)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            listener = open_listener(self.host, 0)  # the defect: "be robust"
        self._listeners.append(listener)
        return listener
