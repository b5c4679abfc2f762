"""The bench's yardstick ``MinimalMasterProxy``: the little it promises, it must do.

It is no proxy to use (it fails the contract's fault requirements on
purpose), but the bench compares the reference against it, so its one path
must be right: round-robin hand-over of the real connection, the master
keeping no copy of any fd, a dispatch deadline, and EOF for the workers once
the master closes. Real forked workers, real loopback clients.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Callable
from typing import cast

import pytest

from fdpass_conformance.bench.minimal import MinimalMasterProxy
from fdpass_conformance.processes import fork_workers

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="counts fds in /proc"),
]


def _fds() -> set[int]:
    return {int(name) for name in os.listdir("/proc/self/fd")}


def _worker(
    proxy: MinimalMasterProxy, listener: socket.socket, serve: int
) -> Callable[[int], object]:
    """Worker ``index``: answer ``serve`` connections (index, peer port, inheritable), then
    report the ports it served and how its next accept ended."""

    def body(index: int) -> object:
        proxy.enter_worker(index)
        served = []
        for _ in range(serve):
            conn = proxy.accept(listener)
            with conn:
                inheritable = os.get_inheritable(conn.fileno())
                peer = conn.getpeername()[1]
                conn.sendall(f"{index} {peer} {inheritable}".encode())
            served.append(peer)
        try:
            proxy.accept(listener)
        except EOFError as exc:
            return served, str(exc)
        return served, "no EOF"

    return body


def test_round_robin_hand_over_then_eof_after_close() -> None:
    proxy = MinimalMasterProxy()
    assert proxy.is_supported()
    listener = proxy.create_socket(0)
    port = listener.getsockname()[1]
    proxy.open_channels(2)
    group = fork_workers(2, _worker(proxy, listener, serve=2), deadline=30)
    clients: list[socket.socket] = []
    ports: list[int] = []
    try:
        for n in range(4):
            client = socket.create_connection(("127.0.0.1", port), timeout=10)
            clients.append(client)
            ports.append(client.getsockname()[1])
            before = _fds()
            # The first dispatch seals (closes the worker ends); no timeout: accept blocks.
            index = proxy.dispatch(listener, None if n % 2 else 10.0)
            after = _fds()
            assert after - before == set()  # the accepted fd was closed in the master
            assert n == 0 or after == before
            assert index == n % 2
            answer = client.recv(256).decode().split()
            assert answer == [str(index), str(client.getsockname()[1]), "False"]
            assert client.recv(1) == b""  # the worker closed it, and no one else holds it
        with pytest.raises(TimeoutError, match="no connection"):
            proxy.dispatch(listener, timeout=0.05)
        proxy.close()
        proxy.close()  # idempotent
        results = group.results()
    finally:
        for client in clients:
            client.close()
        group.close()
        proxy.close()
    for index, result in enumerate(results):
        served, end = cast(tuple[list[int], str], result.get())
        assert served == ports[index::2], index  # worker 0 got clients 0 and 2, worker 1 1 and 3
        assert end == "the master closed the channel"
