"""Defect: the listener's backlog is 1 ("the workers accept fast enough").

Breaks SP-17 (SHOULD, a warning): while every worker is busy, only one
connection can wait, further SYNs are dropped, and clients connecting at once
are not served before the deadline.

FLT-05 fails as well: while its held clients keep the workers busy, a new
client cannot even connect before the deadline ("clients-served-or-closed").
"""

from __future__ import annotations

import socket

from fdpass_conformance.contract import ProtocolType
from reference import ForkSharedProxy

BREAKS = frozenset({"SP-17", "FLT-05"})


class SmallBacklogProxy(ForkSharedProxy):
    def create_socket(
        self, port: int, protocol: ProtocolType | str = ProtocolType.TCP
    ) -> socket.socket:
        listener = super().create_socket(port, protocol)
        listener.listen(1)  # the defect: listen() again with a backlog of 1
        return listener
