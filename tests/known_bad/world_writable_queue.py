"""Defect: the queue is created with mode 0666.

The pull request's ``msg_get_queue()`` was called without permissions, and PHP
then uses 0666: any local user can post fake idle tokens and steer or stall
dispatch. Breaks IPC-05.
"""

from __future__ import annotations

import socket

from fdpass_conformance.contract import ProtocolType
from fdpass_conformance.sysv import MessageQueue
from reference.listener import open_listener, validate_port, validate_protocol

from ._master import PinnedMasterProxy

BREAKS = frozenset({"IPC-05"})
SEED = "pull request: msg_get_queue() default permissions 0666"


class WorldWritableProxy(PinnedMasterProxy):
    def create_socket(
        self, port: int, protocol: ProtocolType | str = ProtocolType.TCP
    ) -> socket.socket:
        port = validate_port(port)
        self.protocol = validate_protocol(protocol)
        self._require_master("create_socket")
        listener = open_listener(self.host, port)
        if self._queue is None:
            try:
                self._queue = MessageQueue(mode=0o666)  # the defect
            except OSError as exc:
                listener.close()
                raise OSError(exc.errno, f"create_socket: {exc.strerror}") from exc
            self._queue_alive = True
        self._listeners.append(listener)
        return listener
