"""Defect: the queue is created before ``bind`` and not removed when ``bind`` fails.

Breaks SP-08 (a port in use leaves a queue behind) and IPC-03 (a failure midway
through ``create_socket`` keeps the IPC object acquired so far). Seed: round 1
follow-up, "if an exception is thrown after this line the queue is orphaned",
and round 3 follow-up, "partial failure leak: no try/finally cleanup".
"""

from __future__ import annotations

import socket

from fdpass_conformance.contract import ProtocolType
from reference import MasterProxy
from reference.listener import open_listener, validate_port, validate_protocol

BREAKS = frozenset({"SP-08", "IPC-03"})
SEED = "round 1 follow-up (queue orphaned), round 3 follow-up (partial failure leak)"


class OrphanedQueueProxy(MasterProxy):
    def create_socket(
        self, port: int, protocol: ProtocolType | str = ProtocolType.TCP
    ) -> socket.socket:
        port = validate_port(port)
        self.protocol = validate_protocol(protocol)
        self._require_master("create_socket")
        if self._queue is None:
            self._queue = self._create_queue()  # queue first...
        listener = open_listener(self.host, port)  # ...the defect: kept if this raises
        self._listeners.append(listener)
        return listener
