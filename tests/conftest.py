"""The project's test configuration: xdist scheduling, and the reference tests' ``lab``.

One conftest for the tree: mypy names a conftest.py outside a package
``conftest``, so a second one (tests/reference had its own) collides.

Scheduling: the known-bad corpus module on one worker, the rest spread.

``tests/test_known_bad.py`` shares one inner pytest session (minutes long)
among its tests through a module-scoped fixture; split over two workers it
runs twice at once. xdist's own ``--dist loadgroup`` (an ``xdist_group``
mark) does not hold with pytest 9.2: xdist 3.8 tags a grouped test by
rewriting ``item._nodeid``, which pytest 9.2 no longer reads (its node ids
live in ``item._id``), so the group is silently dropped. Grouping by node id
in the controller, through xdist's public scheduler hook, does not depend
on that: a scope per module listed here, a scope per test elsewhere. xdist
sends the largest scope first (``--loadscope-reorder``, its default), so the
corpus starts at once while the other worker takes everything else.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from forkkit import Lab  # tests/reference, on sys.path once a test module there is imported

#: Test modules (rootdir-relative) whose tests must all run on one xdist worker.
ONE_WORKER_MODULES = ("tests/test_known_bad.py",)


def pytest_xdist_make_scheduler(config: Any, log: Any) -> Any:
    from xdist.scheduler import LoadScopeScheduling

    class ModuleOnOneWorker(LoadScopeScheduling):  # type: ignore[misc]  # xdist is untyped
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return module if module in ONE_WORKER_MODULES else nodeid

    return ModuleOnOneWorker(config, log)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "private_ipc: run the test (and its workers) in a new IPC namespace"
    )


@pytest.fixture
def lab(request: pytest.FixtureRequest) -> Iterator[Lab]:
    """Real workers, children, clients and queues for one reference test (``forkkit.Lab``);
    all released at teardown.

    Tests marked ``private_ipc`` run in their own IPC namespace: the test
    process's main thread enters a new one for the test and returns afterwards.
    Their queues are then out of reach of concurrent suites on this machine
    that remove "every queue that appeared since they started" with ipcrm; the
    queue-lifecycle tests that must be seen in the machine's own ``ipcs`` are
    not marked.
    """
    from forkkit import Lab, private_ipc_namespace

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
