"""Auto-dispatch moves connections a bounded proxy holds (``pending``).

The reference MasterProxy with ``max_pending`` keeps accepted connections in
its own FIFO while every worker is busy, and hands them out only inside
``dispatch``. The harness used to dispatch only when the listener was
readable, so a waiting connection hung once nobody else connected. Real
forks, one worker kept busy by a held connection.
"""

from __future__ import annotations

import pytest

from fdpass_conformance.fixtures.server import ProxyServerFactory
from fdpass_conformance.harness.master_role import MasterConfig
from fdpass_conformance.harness.server import read_reply
from reference import MasterProxy

pytestmark = pytest.mark.timeout(60)

AFTER_DISPATCH_TIMEOUT = MasterConfig.dispatch_timeout + 0.5


def bounded() -> MasterProxy:
    return MasterProxy(max_pending=4)


def test_a_waiting_connection_is_served_once_the_worker_is_free(
    fdpass_proxy_server: ProxyServerFactory,
) -> None:
    srv = fdpass_proxy_server(bounded, workers=1)
    with srv.connect() as held:
        held.sendall(b"hold")
        assert read_reply(held, b"", timeout=1.0).answered
        with srv.connect() as waiting:
            waiting.sendall(b"ping")
            # Past the harness's auto-dispatch timeout (2 s): the dispatch that accepted
            # this connection has given up, and the connection waits in the proxy.
            assert not read_reply(waiting, b"", timeout=AFTER_DISPATCH_TIMEOUT).answered, (
                "served while the only worker held another connection: not a bounded proxy?"
            )
            held.close()
            reply = read_reply(waiting, b"", timeout=5.0)
    assert reply.answered, f"the waiting connection was never dispatched ({reply.end})"
