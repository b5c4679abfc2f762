"""Fixtures of the reference-proxy tests; the fork helper itself is ``forkkit.Lab``.

``forkkit`` is a plain module next to this file (not ``conftest``) so that test
modules can import its helpers by a name no other conftest.py can shadow.

Tests marked ``private_ipc`` run in their own IPC namespace: the test process's
main thread enters a new one for the test and returns afterwards. Their queues
are then out of reach of concurrent suites on this machine that remove "every
queue that appeared since they started" with ipcrm; the queue-lifecycle tests
that must be seen in the machine's own ``ipcs`` are not marked.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import pytest
from forkkit import Lab, private_ipc_namespace


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "private_ipc: run the test (and its workers) in a new IPC namespace"
    )


@pytest.fixture
def lab(request: pytest.FixtureRequest) -> Iterator[Lab]:
    """Real workers, children, clients and queues for one test; all released at teardown."""
    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("needs /proc (Linux)")
    with contextlib.ExitStack() as stack:
        if request.node.get_closest_marker("private_ipc") is not None:
            try:
                stack.enter_context(private_ipc_namespace())
            except OSError as exc:
                pytest.skip(f"cannot enter a new IPC namespace: {exc}")
        resources = Lab()
        try:
            yield resources
        finally:
            resources.finalize()  # inside the namespace: queue ids are the private ones
