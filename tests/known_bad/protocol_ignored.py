"""Defect: the ``protocol`` argument is accepted and never looked at.

Breaks SP-06: ``create_socket(0, "udp")`` returns a TCP listener instead of
raising ``ValueError``. Seed: round 2 #8 and round 3 follow-up, "$protocol
parameter accepted but unused".
"""

from __future__ import annotations

import socket

from fdpass_conformance.contract import ProtocolType
from reference import ForkSharedProxy
from reference.listener import open_listener, validate_port

BREAKS = frozenset({"SP-06"})
SEED = "round 2 #8, round 3 follow-up: $protocol accepted but unused"


class ProtocolIgnoredProxy(ForkSharedProxy):
    def create_socket(
        self, port: int, protocol: ProtocolType | str = ProtocolType.TCP
    ) -> socket.socket:
        port = validate_port(port)
        # The defect: protocol is never validated (always a TCP stream anyway).
        listener = open_listener(self.host, port)
        self._listeners.append(listener)
        return listener
