"""Defect: the proxy has no ``close()`` method at all.

Breaks SP-01 at configure time: ``--fdpass-impl`` refuses the factory with exit
code 4 and one line naming the missing method, before any test runs. Seed:
round 2 follow-up, "missing destructor/cleanup for the socket pair and message
queue".
"""

from __future__ import annotations

import socket

from fdpass_conformance.contract import ProtocolType
from reference import ForkSharedProxy

BREAKS = frozenset({"SP-01"})
REJECTED = "missing method close()"
SEED = "round 2 follow-up: missing destructor/cleanup"


class NoCloseProxy:
    """Delegates to ForkSharedProxy, but forgot to offer ``close()``."""

    def __init__(self) -> None:
        self._inner = ForkSharedProxy()

    def is_supported(self) -> bool:
        return self._inner.is_supported()

    def create_socket(
        self, port: int, protocol: ProtocolType | str = ProtocolType.TCP
    ) -> socket.socket:
        return self._inner.create_socket(port, protocol)

    def accept(self, listener: socket.socket) -> socket.socket:
        return self._inner.accept(listener)
