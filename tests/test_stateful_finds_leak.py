"""FLT-05's state machine finds a leak that no single-fault check sees, and shrinks it.

``known_bad.conditional_leak`` leaks the connection only on one path: a send
to a worker that turned out dead (killed), then a re-route. Every other suite
passes it (FP-08's client is answered; FP-09 and FLT-01 take paths without the
leak), so this proves that the stateful test reaches that path, names the
broken invariant in the first line of its failure, and shrinks the run to a
handful of steps (start, kill_worker, request); and that the same machine,
seed and deadlines pass the reference MasterProxy.

Every run here uses the default profile with the fixed seed ``SEED`` (and
tighter deadlines than the suite's, so that each failing example of the
shrinking costs half a second), so it explores the same sequences each time.
"""

from __future__ import annotations

from typing import ClassVar

import pytest
from known_bad._releasing_master import ReleasingMasterProxy
from known_bad.conditional_leak import ConditionalLeakProxy

from fdpass_conformance.leaks.fds import fd_count
from fdpass_conformance.suites.stateful import (
    FIXED_SEED,
    INV_CLIENT,
    INV_MASTER_FDS,
    PROFILE_DEFAULT,
    InvariantViolation,
    ProxyMachine,
    run_stateful,
)
from reference import MasterProxy

SEED = FIXED_SEED
#: At most this many steps in the shrunk run, its start included.
MAX_STEPS = 5

pytestmark = pytest.mark.timeout(300)


class QuickMachine(ProxyMachine):
    """The FLT-05 machine with tight deadlines: each failing example costs one of them.

    A loopback client is answered within milliseconds; the reference passes
    the same run with these deadlines (the last test), so they catch only
    clients that are really left hanging.
    """

    client_timeout: ClassVar[float] = 0.5
    busy_window: ClassVar[float] = 0.2
    settle_timeout: ClassVar[float] = 0.5


def _steps(request: pytest.FixtureRequest) -> list[str]:
    props = dict(request.node.user_properties)
    assert "fdpass_steps" in props, f"no fdpass_steps recorded: {sorted(props)}"
    return str(props["fdpass_steps"]).splitlines()


def test_finds_and_shrinks_the_conditional_leak(request: pytest.FixtureRequest) -> None:
    with pytest.raises(InvariantViolation) as info:
        run_stateful(
            ConditionalLeakProxy, request, machine=QuickMachine, profile="default", seed_value=SEED
        )
    failure = info.value
    first = str(failure).splitlines()[0]
    assert first.startswith(f"FLT-05 invariant broken: {failure.invariant}: "), first
    # The leaked copy keeps the client's connection open (no EOF) and the master's fd.
    assert failure.invariant in (INV_CLIENT, INV_MASTER_FDS), first
    props = dict(request.node.user_properties)
    assert props["fdpass_invariant"] == failure.invariant
    assert props["fdpass_hypothesis"] == f"profile={PROFILE_DEFAULT} seed={SEED}"
    steps = _steps(request)
    assert len(steps) <= MAX_STEPS, "not shrunk:\n" + "\n".join(steps)
    assert steps[0].startswith("1. start "), steps
    assert "BROKEN: " + failure.invariant in steps[-1], steps
    # The path of the bug: a worker is killed, then a request is sent to it first.
    kills = [n for n, step in enumerate(steps) if "kill_worker" in step]
    assert kills and kills[0] < len(steps) - 1, steps
    notes = "\n".join(getattr(failure, "__notes__", []))
    if notes:  # Python 3.11+: the report carries Hypothesis's program and our steps
        assert "state.start(" in notes and "state.kill_worker(" in notes, notes
        assert "FLT-05 shrunk steps" in notes, notes


def test_the_reference_passes_the_same_run(request: pytest.FixtureRequest) -> None:
    run = run_stateful(
        MasterProxy, request, machine=QuickMachine, profile="default", seed_value=SEED
    )
    assert run.profile == PROFILE_DEFAULT and run.seed == SEED
    assert run.machine is not None and run.machine.failed is None
    assert not any(name == "fdpass_steps" for name, _ in request.node.user_properties)


class ShrinkWatchingMachine(QuickMachine):
    """Records whether the master ever held fewer fds than at its baseline, so the
    test below knows the run reached the release it is about."""

    shrank: ClassVar[list[bool]] = []

    def master_fds_flat(self) -> None:
        srv = self._srv()
        assert srv.master_pid is not None
        if fd_count(srv.master_pid) < len(self.master_base):
            type(self).shrank.append(True)
        super().master_fds_flat()


def test_a_master_releasing_a_dead_workers_channel_passes(
    request: pytest.FixtureRequest,
) -> None:
    run = run_stateful(
        ReleasingMasterProxy,
        request,
        machine=ShrinkWatchingMachine,
        profile="default",
        seed_value=SEED,
    )
    assert run.machine is not None and run.machine.failed is None
    assert ShrinkWatchingMachine.shrank, "no step left the master below its baseline fd count"
