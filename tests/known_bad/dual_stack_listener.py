"""Defect: the listener is a dual-stack IPv6 socket on ``::`` instead of AF_INET.

Breaks SP-03 (the listener is not ``AF_INET``), and because every connection
then arrives with IPv4-mapped addresses (``::ffff:127.0.0.1``), SP-09 (the
worker's peer address is not the client's) and FP-02 (the worker's local and
peer addresses differ from the connection the client made).

FLT-05 fails as well: its "answers-match-clients" invariant compares the
worker's peer address with the client's.
"""

from __future__ import annotations

import socket

from reference import MasterProxy
from reference.listener import BACKLOG

BREAKS = frozenset({"SP-03", "SP-09", "FP-02", "FLT-05"})


class DualStackProxy(MasterProxy):
    def _open_listener(self, port: int) -> socket.socket:
        # The defect: "serve IPv6 too" with one AF_INET6 socket on the wildcard.
        try:
            sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        except OSError as exc:
            raise OSError(exc.errno, f"create_socket: socket() failed: {exc.strerror}") from exc
        step = "setsockopt"
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            step = f"bind([::]:{port})"
            sock.bind(("::", port))
            step = "listen()"
            sock.listen(BACKLOG)
        except OSError as exc:
            sock.close()
            raise OSError(exc.errno, f"create_socket: {step} failed: {exc.strerror}") from exc
        return sock
