"""The reference MasterProxy over a SOCK_STREAM channel, as on macOS, through real forks.

macOS has no SOCK_SEQPACKET for AF_UNIX, so ``reference.channel`` falls back
to SOCK_STREAM there. These tests force that fallback on Linux and run the
proxy end to end: a real forked master and workers, real SCM_RIGHTS.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest

from fdpass_conformance.fixtures.server import ProxyServerFactory
from fdpass_conformance.harness.server import ProxyServer, read_reply
from fdpass_conformance.suites import FaultSuite, FdPassingSuite
from reference import MasterProxy, channel

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="reads /proc for evidence"),
]

#: ``Type`` column of /proc/net/unix.
UNIX_TYPES = {1: "stream", 2: "dgram", 5: "seqpacket"}


@pytest.fixture
def stream_channel(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """MOCK: the channel type macOS would pick, forced on Linux (forks inherit it)."""
    monkeypatch.setattr(channel, "CHANNEL_TYPE", socket.SOCK_STREAM)
    yield


def unix_socket_types(pid: int) -> list[str]:
    """The type of every AF_UNIX socket ``pid`` holds, from /proc."""
    inodes = []
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.append(int(link[8:-1]))
    types: dict[int, str] = {}
    with open(f"/proc/{pid}/net/unix", encoding="ascii") as fh:
        next(fh)
        for line in fh:
            fields = line.split()
            types[int(fields[6])] = UNIX_TYPES.get(int(fields[4], 16), fields[4])
    return [types[i] for i in inodes if i in types]


def channel_types(srv: ProxyServer) -> set[str]:
    pids = [srv.master_pid or 0, *srv.worker_pids]
    return {kind for pid in pids for kind in unix_socket_types(pid)}


def test_control_run_uses_seqpacket_on_linux(fdpass_proxy_server: ProxyServerFactory) -> None:
    """Without the mock the channels are SOCK_SEQPACKET: the evidence below can tell them apart."""
    srv = fdpass_proxy_server(MasterProxy, workers=2)
    assert srv.request_reply(b"ping").answered
    assert "seqpacket" in channel_types(srv)


@pytest.mark.usefixtures("stream_channel")
def test_stream_channel_serves_end_to_end(fdpass_proxy_server: ProxyServerFactory) -> None:
    """MOCK of macOS's SOCK_STREAM channel; the serving, forking and fd passing are real.

    Every connection is served by a worker, dispatch reports the worker that
    got it, consecutive fds on one stream are not merged, a dead worker's
    connections are re-routed, and shutting down leaves nothing.
    """
    srv = fdpass_proxy_server(MasterProxy, workers=2)
    replies = [srv.request_reply(b"ping %d" % n) for n in range(8)]
    assert all(r.answered for r in replies), [r.end for r in replies]
    assert {r.pid for r in replies} <= set(srv.worker_pids)  # workers, never the master
    assert "seqpacket" not in channel_types(srv), "the mock did not reach the forked server"

    srv.set_auto(False)
    clients = [srv.connect() for _ in range(4)]
    try:
        for n, client in enumerate(clients):  # four fds in a row: one tag byte each
            client.sendall(b"burst %d" % n)
            index = srv.dispatch(timeout=5.0)
            reply = read_reply(client, b"", timeout=5.0)
            assert reply.answered and reply.index == index and reply.data == f"burst {n}"
    finally:
        for client in clients:
            client.close()

    srv.kill_worker(0)
    with srv.connect() as client:
        client.sendall(b"after kill")
        index = srv.dispatch(timeout=5.0)
        assert index == 1
        assert read_reply(client, b"", timeout=5.0).answered
    report = srv.shutdown()
    assert report.ipc_left == [] and report.processes_left == []


@pytest.mark.usefixtures("stream_channel")
class TestFdPassingSuitesOverStream(FdPassingSuite, FaultSuite):
    """MOCK of macOS's SOCK_STREAM channel: every FP and FLT test, real forks and fds."""

    factory = MasterProxy
