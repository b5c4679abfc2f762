"""End to end through forked workers, and who owns a connection afterwards.

Every test runs the three reference proxies with real worker processes: the
test process is the master (it creates the listener and, for MasterProxy,
dispatches), the workers are forked from it and answer with their pid.
"""

from __future__ import annotations

import functools
import json
import os
import socket

import pytest
from forkkit import (
    IDS,
    PROXIES,
    Lab,
    ProxyClass,
    Workers,
    expect_eof,
    fd_count,
    read_line,
    wait_for,
)

from fdpass_conformance.contract import ProtocolType
from reference import MasterProxy
from reference.shared_listener import SharedListenerProxy

pytestmark = [pytest.mark.timeout(30), pytest.mark.private_ipc]


def start(
    lab: Lab, cls: ProxyClass, workers: int, protocol: str = "tcp"
) -> tuple[SharedListenerProxy | MasterProxy, socket.socket, int, Workers]:
    """Listener, channels (fd-passing only) and ``workers`` forked workers, all ready."""
    proxy = lab.proxy(cls)
    listener, port = lab.listen(proxy, 0, protocol)
    if isinstance(proxy, MasterProxy):
        proxy.open_channels(workers)
    pool = lab.workers(proxy, listener, workers)
    return proxy, listener, port, pool


def serve_one(
    lab: Lab,
    proxy: SharedListenerProxy | MasterProxy,
    listener: socket.socket,
    port: int,
    pool: Workers,
    payload: bytes = b"ping",
) -> int:
    """One request end to end (EOF checked); the pid that answered.

    For MasterProxy the test process dispatches, and the returned index must
    be the worker that answered (FP-04).
    """
    if isinstance(proxy, MasterProxy):
        index, pid = lab.ask_via(proxy, listener, port, payload)
        assert pool.pids[index] == pid, (
            f"dispatch returned worker {index} (pid {pool.pids[index]}) but pid {pid} answered"
        )
        return pid
    return lab.ask(port, payload)


@pytest.mark.parametrize("cls", PROXIES, ids=IDS)
def test_end_to_end_served_by_worker_never_master(lab: Lab, cls: ProxyClass) -> None:
    """SP-10: a client on 127.0.0.1:port is answered by a worker pid, never the master's."""
    proxy, listener, port, pool = start(lab, cls, 3)
    served = [serve_one(lab, proxy, listener, port, pool) for _ in range(12)]
    assert os.getpid() not in served
    assert set(served) <= set(pool.pids), f"answered by non-workers {set(served) - set(pool.pids)}"


@pytest.mark.parametrize("cls", PROXIES, ids=IDS)
def test_ownership_client_sees_eof_when_worker_closes(lab: Lab, cls: ProxyClass) -> None:
    """SP-11: when the worker closes, the client sees EOF: no other process holds a copy."""
    proxy, listener, port, pool = start(lab, cls, 2)
    for _ in range(3):
        with lab.connect(port, b"ping") as conn:
            if isinstance(proxy, MasterProxy):
                proxy.dispatch(listener, timeout=5.0)
            assert int(read_line(conn)) in pool.pids
            seen = expect_eof(conn, timeout=3.0)
            assert seen == "eof", f"the worker closed but the client saw {seen}"


def _has_fds(pid: int, n: int) -> bool:
    return fd_count(pid) == n


@pytest.mark.parametrize("cls", PROXIES, ids=IDS)
def test_ownership_fd_counts_flat_over_200_connections(lab: Lab, cls: ProxyClass) -> None:
    """SP-16/FP-03: 200 connections leave the master's and every worker's fd count flat."""
    proxy, listener, port, pool = start(lab, cls, 2)
    for _ in range(4):  # warm up: the first dispatch seals the channels
        serve_one(lab, proxy, listener, port, pool)
    master_before = fd_count()
    workers_before = {pid: fd_count(pid) for pid in pool.pids}
    for _ in range(200):
        serve_one(lab, proxy, listener, port, pool)
    assert fd_count() == master_before, "the master's fd count grew over 200 connections"
    for pid, before in workers_before.items():
        # A worker may still be between close() and its next accept(): settle briefly.
        assert wait_for(functools.partial(_has_fds, pid, before), 2.0), (
            f"worker {pid}: {before} fds before, {fd_count(pid)} after 200 connections"
        )


@pytest.mark.parametrize("cls", PROXIES, ids=IDS)
def test_ownership_received_socket_noninheritable_blocking_same_connection(
    lab: Lab, cls: ProxyClass
) -> None:
    """FP-05/FP-02/SP-09: the worker's socket is non-inheritable, blocking, the client's."""
    proxy, listener, port, pool = start(lab, cls, 1)
    for _ in range(2):
        with lab.connect(port, b"info") as conn:
            if isinstance(proxy, MasterProxy):
                proxy.dispatch(listener, timeout=5.0)
            info = json.loads(read_line(conn))
            assert info["pid"] == pool.pids[0]
            assert info["inheritable"] is False, "received socket is inheritable (no CLOEXEC)"
            assert info["blocking"] is True, "received socket object is non-blocking"
            assert info["o_nonblock"] is False, "received fd has O_NONBLOCK set"
            assert info["family"] == socket.AF_INET
            assert info["type"] == socket.SOCK_STREAM
            assert tuple(info["peername"]) == conn.getsockname(), "not the client's connection"
            assert tuple(info["sockname"]) == ("127.0.0.1", port)


@pytest.mark.parametrize("protocol", [ProtocolType.HTTP, "websocket"], ids=["HTTP", "websocket"])
@pytest.mark.parametrize("cls", PROXIES, ids=IDS)
def test_http_and_websocket_listeners_served_end_to_end(
    lab: Lab, cls: ProxyClass, protocol: str
) -> None:
    """SP-06: HTTP and WEBSOCKET (enum or plain str) give a stream listener served by a worker."""
    proxy, listener, port, pool = start(lab, cls, 1, protocol)
    assert listener.type == socket.SOCK_STREAM
    assert listener.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
    assert serve_one(lab, proxy, listener, port, pool) == pool.pids[0]
