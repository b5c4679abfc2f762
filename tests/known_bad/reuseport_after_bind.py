"""Defect: ``SO_REUSEPORT`` is set after ``bind()``, where it no longer counts.

Breaks SP-15: the listener reports ``SO_REUSEPORT`` but was bound without it,
so a second instance cannot bind the same port (EADDRINUSE).
"""

from __future__ import annotations

import socket

from fdpass_conformance.contract import ProtocolType
from reference import ReusePortProxy
from reference.listener import BACKLOG, validate_port, validate_protocol

BREAKS = frozenset({"SP-15"})


class LateReusePortProxy(ReusePortProxy):
    def create_socket(
        self, port: int, protocol: ProtocolType | str = ProtocolType.TCP
    ) -> socket.socket:
        port = validate_port(port)
        self.protocol = validate_protocol(protocol)
        try:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        except OSError as exc:
            raise OSError(exc.errno, f"create_socket: socket() failed: {exc.strerror}") from exc
        step = "setsockopt(SO_REUSEADDR)"
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            step = f"bind({self.host}:{port})"
            sock.bind((self.host, port))
            step = "setsockopt(SO_REUSEPORT)"
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # the defect: too late
            step = "listen()"
            sock.listen(BACKLOG)
        except OSError as exc:
            sock.close()
            raise OSError(exc.errno, f"create_socket: {step} failed: {exc.strerror}") from exc
        self._listeners.append(sock)
        return sock
