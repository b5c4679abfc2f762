"""Defect: the listener is created without ``SO_REUSEADDR``.

Breaks SP-05. (A restarted server could then not bind while connections of
the previous one sit in TIME_WAIT.)

SP-12 fails as well: the connections the workers closed sit in TIME_WAIT
without SO_REUSEADDR (they inherit the listener's options), so the port
cannot be bound again at once after ``close()``, which is the very reason
SP-05 exists.
"""

from __future__ import annotations

import socket

from fdpass_conformance.contract import ProtocolType
from reference import ForkSharedProxy
from reference.listener import BACKLOG, validate_port, validate_protocol

BREAKS = frozenset({"SP-05", "SP-12"})


class NoReuseAddrProxy(ForkSharedProxy):
    def create_socket(
        self, port: int, protocol: ProtocolType | str = ProtocolType.TCP
    ) -> socket.socket:
        port = validate_port(port)
        self.protocol = validate_protocol(protocol)
        try:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        except OSError as exc:
            raise OSError(exc.errno, f"create_socket: socket() failed: {exc.strerror}") from exc
        step = f"bind({self.host}:{port})"
        try:
            # The defect: no setsockopt(SOL_SOCKET, SO_REUSEADDR, 1) before bind.
            sock.bind((self.host, port))
            step = "listen()"
            sock.listen(BACKLOG)
        except OSError as exc:
            sock.close()
            raise OSError(exc.errno, f"create_socket: {step} failed: {exc.strerror}") from exc
        self._listeners.append(sock)
        return sock
