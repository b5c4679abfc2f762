"""Strategies where workers accept from a listener they inherited across fork()."""

from __future__ import annotations

import socket

from fdpass_conformance.contract import ProtocolType

from .listener import open_listener, validate_port, validate_protocol


class SharedListenerProxy:
    """Common body of ForkShared and ReusePort: the kernel does the dispatching."""

    reuse_port = False

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.protocol: ProtocolType | None = None
        self._listeners: list[socket.socket] = []

    def is_supported(self) -> bool:
        return True

    def create_socket(
        self, port: int, protocol: ProtocolType | str = ProtocolType.TCP
    ) -> socket.socket:
        port = validate_port(port)
        self.protocol = validate_protocol(protocol)
        listener = open_listener(self.host, port, reuse_port=self.reuse_port)
        self._listeners.append(listener)
        return listener

    def accept(self, listener: socket.socket) -> socket.socket:
        conn, _ = listener.accept()
        return conn

    def close(self) -> None:
        """Close every listener this process holds; idempotent, never raises for a closed one."""
        listeners, self._listeners = self._listeners, []
        for listener in listeners:
            listener.close()


class ForkSharedProxy(SharedListenerProxy):
    """One listener created by the master and inherited by every worker."""


class ReusePortProxy(SharedListenerProxy):
    """A listener with SO_REUSEPORT, so that further listeners can join its port.

    Workers accept from the inherited listener; any process may bind the same
    port again with ``create_socket`` while it is open (SP-15), and the kernel
    spreads connections over the listeners of the group.
    """

    reuse_port = True

    def is_supported(self) -> bool:
        return hasattr(socket, "SO_REUSEPORT")
