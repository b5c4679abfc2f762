"""ACME's own tests, written with the toolkit's fixtures (docs: "Writing your own tests").

The fixtures come with the toolkit's pytest plugin, installed with the
package: no conftest.py and no import is needed to use them.
"""

from __future__ import annotations

import os
import socket

import pytest
from acme_proxy import AcmeMasterProxy, _sysv

from fdpass_conformance.fixtures.core import ForkWorkers
from fdpass_conformance.fixtures.leaks import LeakCheck
from fdpass_conformance.fixtures.server import ProxyServerFactory
from fdpass_conformance.sysv import MessageQueue


# --8<-- [start:fdpass_proxy_server]
def test_every_worker_serves_and_nothing_is_left(fdpass_proxy_server: ProxyServerFactory) -> None:
    srv = fdpass_proxy_server(AcmeMasterProxy, workers=3)
    served_by = {srv.request_reply(b"hello").pid for _ in range(12)}
    assert served_by == set(srv.worker_pids)
    report = srv.shutdown()
    assert report.ipc_left == [], "close() must remove the idle-token queue"
    assert report.processes_left == []


# --8<-- [end:fdpass_proxy_server]


# --8<-- [start:fdpass_leak_check]
def test_failed_bind_leaks_nothing(fdpass_leak_check: LeakCheck) -> None:
    proxy = AcmeMasterProxy()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(OSError, match="bind"):
            proxy.create_socket(taken.getsockname()[1])
    proxy.close()
    # fdpass_leak_check fails the test at teardown on a new fd, child, port or IPC object


# --8<-- [end:fdpass_leak_check]


# --8<-- [start:fdpass_sysv_queue]
def test_idle_tokens_are_first_in_first_out(fdpass_sysv_queue: MessageQueue) -> None:
    for index in (2, 0, 1):
        _sysv.post(fdpass_sysv_queue.id, index)
    assert [_sysv.take(fdpass_sysv_queue.id) for _ in range(4)] == [2, 0, 1, None]


# --8<-- [end:fdpass_sysv_queue]


# --8<-- [start:fdpass_unix_socketpair]
def test_received_fd_is_close_on_exec(
    fdpass_unix_socketpair: tuple[socket.socket, socket.socket],
) -> None:
    master_end, worker_end = fdpass_unix_socketpair
    proxy = AcmeMasterProxy()
    r, w = os.pipe()
    try:
        proxy._send(master_end, r, b"R")
        tag, fds, _flags = proxy._receive(worker_end)
    finally:
        os.close(r)
        os.close(w)
    assert tag == b"R" and len(fds) == 1
    assert not os.get_inheritable(fds[0])
    os.close(fds[0])


# --8<-- [end:fdpass_unix_socketpair]


# --8<-- [start:fdpass_forked_workers]
def test_dispatch_reaches_forked_workers(fdpass_forked_workers: ForkWorkers) -> None:
    proxy = AcmeMasterProxy()
    listener = proxy.create_socket(0)
    proxy.open_channels(2)

    def worker(index: int) -> list[bytes]:  # runs in a forked child
        proxy.enter_worker(index)
        served = []
        try:
            while True:  # until the master closes its side (EOFError)
                with proxy.accept(listener) as conn:
                    served.append(conn.recv(64))
        except EOFError:
            pass
        proxy.close()
        return served

    group = fdpass_forked_workers(2, worker, deadline=10.0)
    try:
        clients = [socket.create_connection(listener.getsockname(), timeout=5) for _ in range(2)]
        for n, client in enumerate(clients):
            client.sendall(b"request %d" % n)
            proxy.dispatch(listener, timeout=5.0)
        proxy.close()  # the workers see EOF once they have taken what was sent
        results = group.results()
    finally:
        proxy.close()
    served = [data for r in results for data in r.get()]  # type: ignore[attr-defined]
    assert sorted(served) == [b"request 0", b"request 1"]
    for client in clients:
        client.close()


# --8<-- [end:fdpass_forked_workers]
