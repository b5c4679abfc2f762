"""Listening TCP ports: who still listens, and whether a port can be bound again.

SP-12 requires that after ``close()`` the port can be bound again; a
listener kept open by a forgotten worker is the usual reason it cannot.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import sys

import psutil  # type: ignore[import-untyped, unused-ignore]

from fdpass_conformance.leaks import _procnet

_WILDCARDS = ("0.0.0.0", "::")


def _serves(bound: str, host: str | None) -> bool:
    """Whether a listener bound to ``bound`` accepts connections to ``host``.

    A wildcard listener does: it accepts on every address (``::`` also takes
    IPv4 unless IPV6_V6ONLY is set, and in either case it keeps the port
    from being bound again on Linux).
    """
    if host is None or bound in _WILDCARDS:
        return True
    try:
        return ipaddress.ip_address(bound) == ipaddress.ip_address(host)
    except ValueError:
        return bound == host


def listening_ports(host: str | None = "127.0.0.1", pid: int | None = None) -> set[int]:
    """TCP ports with a listener that accepts on ``host`` (``None``: any address).

    With ``pid``, only that process's listeners (through psutil, which maps
    sockets to fds portably); ProcessLookupError if it does not exist.
    Without, every listener of this network namespace: on Linux read
    straight from ``/proc/net/tcp{,6}``, which needs no privileges and no
    walk over every process, elsewhere through psutil.
    """
    if pid is not None:
        try:
            proc = psutil.Process(pid)
            conns = getattr(proc, "net_connections", None) or proc.connections
            entries = [(c.laddr, c.status) for c in conns(kind="tcp")]
        except psutil.NoSuchProcess:
            raise ProcessLookupError(f"no process with pid {pid}") from None
        return {
            int(laddr[1])
            for laddr, status in entries
            if status == psutil.CONN_LISTEN and _serves(str(laddr[0]), host)
        }
    if sys.platform.startswith("linux"):
        return {
            entry.local[1]
            for entry in _procnet.tcp_entries("self")
            if entry.listening and _serves(entry.local[0], host)
        }
    return {
        int(c.laddr[1])
        for c in psutil.net_connections(kind="tcp")
        if c.status == psutil.CONN_LISTEN and _serves(str(c.laddr[0]), host)
    }


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a listener with SO_REUSEADDR could take ``host:port`` right now.

    This is the condition ``create_socket(port)`` needs, so the check does
    what a listener does, bind and listen with SO_REUSEADDR: connections
    lingering in TIME_WAIT do not count, a socket listening on the port does
    (Linux refuses the bind, other systems may refuse only the listen).
    Errors other than EADDRINUSE (a host that is not local, say) are raised.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
            sock.listen(1)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return False
            raise
    return True
