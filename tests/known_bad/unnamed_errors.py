"""Defect: ``create_socket`` re-raises the socket module's bare ``OSError``.

The errno is right and the socket is closed, but the message is only the
strerror ("[Errno 13] Permission denied"), naming no call. Breaks SP-19
(SHOULD, a warning): an operator cannot tell whether bind or listen failed.
"""

from __future__ import annotations

import socket

from fdpass_conformance.contract import ProtocolType
from reference import ForkSharedProxy
from reference.listener import BACKLOG, validate_port, validate_protocol

BREAKS = frozenset({"SP-19"})


class UnnamedErrorProxy(ForkSharedProxy):
    def create_socket(
        self, port: int, protocol: ProtocolType | str = ProtocolType.TCP
    ) -> socket.socket:
        port = validate_port(port)
        self.protocol = validate_protocol(protocol)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, port))
            sock.listen(BACKLOG)
        except OSError:
            sock.close()
            raise  # the defect: no step named in the message
        self._listeners.append(sock)
        return sock
