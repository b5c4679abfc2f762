"""Listening ports and port reuse, on real sockets."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest

from fdpass_conformance.leaks import listening_ports, port_is_free

from .helpers import Children, read_line


@pytest.fixture
def listeners() -> Iterator[list[socket.socket]]:
    opened: list[socket.socket] = []
    try:
        yield opened
    finally:
        for sock in opened:
            sock.close()


def listen(opened: list[socket.socket], host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.create_server((host, 0), family=family)
    opened.append(sock)
    return int(sock.getsockname()[1])


def test_listener_on_loopback_is_seen_until_closed(listeners: list[socket.socket]) -> None:
    port = listen(listeners, "127.0.0.1")
    assert port in listening_ports()
    assert port in listening_ports("127.0.0.1", pid=os.getpid())
    assert not port_is_free(port)
    listeners.pop().close()
    assert port not in listening_ports("127.0.0.1", pid=os.getpid())
    assert port_is_free(port)


def test_host_filter(listeners: list[socket.socket]) -> None:
    other = listen(listeners, "127.0.0.2")  # all of 127/8 is loopback on Linux
    assert other not in listening_ports("127.0.0.1")
    assert other in listening_ports("127.0.0.2")
    assert other in listening_ports(None)
    assert other in listening_ports(None, pid=os.getpid())


def test_wildcard_listener_counts_for_loopback(listeners: list[socket.socket]) -> None:
    port = listen(listeners, "0.0.0.0")
    assert port in listening_ports("127.0.0.1")
    assert port in listening_ports("127.0.0.1", pid=os.getpid())
    assert not port_is_free(port)


def test_connected_socket_is_not_a_listener(listeners: list[socket.socket]) -> None:
    port = listen(listeners, "127.0.0.1")
    client = socket.create_connection(("127.0.0.1", port), timeout=5)
    listeners.append(client)
    served, _ = listeners[0].accept()
    listeners.append(served)
    assert client.getsockname()[1] not in listening_ports(None, pid=os.getpid())


def test_pid_filter_excludes_other_processes(
    listeners: list[socket.socket], children: Children
) -> None:
    proc = children.python(
        "import socket, sys\n"
        "l = socket.create_server(('127.0.0.1', 0))\n"
        "print(l.getsockname()[1], flush=True)\n"
        "sys.stdin.read()\n"
    )
    theirs = int(read_line(proc))
    mine = listen(listeners, "127.0.0.1")
    assert theirs in listening_ports(pid=proc.pid)
    assert mine not in listening_ports(pid=proc.pid)
    assert theirs not in listening_ports(pid=os.getpid())
    assert {theirs, mine} <= listening_ports()


def test_ipv6_loopback(listeners: list[socket.socket]) -> None:
    try:
        port = listen(listeners, "::1")
    except OSError:
        pytest.skip("no IPv6 loopback")
    assert port in listening_ports("::1")
    assert port not in listening_ports("127.0.0.1")
    assert not port_is_free(port, "::1")


def test_missing_process_raises(children: Children) -> None:
    pid = children.fork_exiting()
    os.waitpid(pid, 0)
    with pytest.raises(ProcessLookupError):
        listening_ports(pid=pid)


def test_port_is_free_raises_on_foreign_address() -> None:
    with pytest.raises(OSError):
        port_is_free(0, "192.0.2.1")  # TEST-NET-1: never a local address
