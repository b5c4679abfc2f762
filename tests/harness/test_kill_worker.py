"""``ProxyServer.kill_worker`` on a worker that already left on its own.

A known-bad proxy's workers gave up after repeated accept errors and exited;
FP-09's test then killed them and errored with ProcessLookupError instead of
checking dispatch. Real forks: the worker exits through the echo handler's
``exit`` request.
"""

from __future__ import annotations

import signal
import time

import psutil
import pytest

from fdpass_conformance.fixtures.server import ProxyServerFactory
from reference import ForkSharedProxy, MasterProxy

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("factory", [MasterProxy, ForkSharedProxy])
def test_killing_an_exited_worker_is_not_an_error(
    fdpass_proxy_server: ProxyServerFactory, factory: type
) -> None:
    srv = fdpass_proxy_server(factory, workers=2)
    reply = srv.request_reply(b"exit")
    assert reply.answered and reply.index is not None
    srv.wait_events("exit", 1)
    gone = srv.worker_pids[reply.index]
    deadline = time.monotonic() + 10
    while psutil.pid_exists(gone):  # the master's serve loop reaps it (every 0.2 s)
        assert time.monotonic() < deadline, f"the exited worker {gone} was never reaped"
        time.sleep(0.01)
    srv.kill_worker(reply.index)  # gone already: nothing to do, no error
    srv.kill_worker(reply.index, signal.SIGTERM)
    other = 1 - reply.index
    pid = srv.worker_pids[other]
    srv.kill_worker(other)  # a live one is still killed
    assert _gone(pid), f"worker {other} (pid {pid}) survived SIGKILL"


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
