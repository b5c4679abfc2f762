"""Input validation and the TCP listener that every reference proxy starts from.

Validation happens before any socket exists, so invalid input can never leak
anything (SP-06, SP-07); each failing step is named in the error, so that a
reader never gets a message about the wrong call (seed round 2, #1 and #6).
"""

from __future__ import annotations

import socket

from fdpass_conformance.contract import ProtocolType

BACKLOG = socket.SOMAXCONN


def validate_port(port: object) -> int:
    if isinstance(port, bool) or not isinstance(port, int):
        raise TypeError(f"port must be an int, got {type(port).__name__} {port!r}")
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} is outside 0..65535")
    return port


def validate_workers(workers: int) -> int:
    if isinstance(workers, bool) or not isinstance(workers, int):
        raise TypeError(f"workers must be an int, got {type(workers).__name__}")
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    return workers


def validate_protocol(protocol: object) -> ProtocolType:
    try:
        return ProtocolType(protocol)
    except ValueError:
        known = ", ".join(p.value for p in ProtocolType)
        raise ValueError(f"unknown protocol {protocol!r}; expected one of {known}") from None


def open_listener(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """A blocking, non-inheritable listener with SO_REUSEADDR (and SO_REUSEPORT if asked).

    On failure the socket is closed and the OSError keeps the failing call's
    errno, with a message naming that call.
    """
    try:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    except OSError as exc:
        raise OSError(exc.errno, f"create_socket: socket() failed: {exc.strerror}") from exc
    step = "setsockopt(SO_REUSEADDR)"
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            step = "setsockopt(SO_REUSEPORT)"
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        step = f"bind({host}:{port})"
        sock.bind((host, port))
        step = "listen()"
        sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"create_socket: {step} failed: {exc.strerror}") from exc
    return sock
