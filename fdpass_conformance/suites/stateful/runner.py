"""Running FLT-05's machine as a test: the profile and seed, and what the report records."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import pytest
from hypothesis import seed
from hypothesis.stateful import run_state_machine_as_test

from ...contract import is_fd_passing
from ...runstate import run_options
from .invariants import InvariantViolation, first_line
from .machine import ProxyMachine
from .profiles import FIXED_SEED, resolve_profile


@dataclass
class StatefulRun:
    """What ``run_stateful`` did: the profile, the seed, and the machine of the last example."""

    profile: str
    seed: Any
    machine: ProxyMachine | None = None


def run_stateful(
    factory: Callable[[], object],
    request: pytest.FixtureRequest,
    *,
    machine: type[ProxyMachine] = ProxyMachine,
    profile: str | None = None,
    seed_value: Any = None,
) -> StatefulRun:
    """Run the FLT-05 state machine against ``factory``; raise its failure, if any.

    ``profile`` defaults to ``--fdpass-hypothesis-profile``; the seed to
    ``--hypothesis-seed``, else a fixed one for derandomized profiles, else a
    fresh one. Both are recorded in the test's ``user_properties``
    (``fdpass_hypothesis``); on failure so are the shrunk steps
    (``fdpass_steps``) and the broken invariant (``fdpass_invariant``).

    The failure raised is the ``InvariantViolation`` of the shrunk example.
    If that example did not fail again when Hypothesis replayed it (the bug
    depends on timing), the shortest failing example seen is reported instead,
    with a note saying so.
    """
    name = profile or run_options(request.config).hypothesis_profile
    real, chosen = resolve_profile(name)
    if seed_value is None:
        seed_value = request.config.getoption("hypothesis_seed", None)
    if seed_value is None:
        seed_value = FIXED_SEED if chosen.derandomize else random.getrandbits(32)
    bound = cast(
        type[ProxyMachine],
        type(machine.__name__, (machine,), {"impl_factory": staticmethod(factory)}),
    )
    bound.impl_fd_passing = _fd_passing_impl(factory)
    bound.pytest_request = request
    bound.failures = []
    seed(seed_value)(bound)
    run = StatefulRun(real, seed_value)
    props = request.node.user_properties
    props.append(("fdpass_hypothesis", f"profile={real} seed={seed_value}"))
    replay = f"--fdpass-hypothesis-profile={name} --hypothesis-seed={seed_value}"
    try:
        run_state_machine_as_test(bound, settings=chosen)
    except InvariantViolation as exc:
        last = bound.last
        steps = last.steps if last is not None and last.violation is exc else _steps_of(bound, exc)
        _report(props, exc, steps, f"FLT-05 shrunk steps (profile {real}; replay with {replay})")
        raise
    except Exception as exc:
        if not bound.failures:
            raise
        # Hypothesis could not replay the failure reliably: report the shortest one seen.
        steps, violation = min(bound.failures, key=lambda f: len(f[0]))
        _report(
            props,
            violation,
            steps,
            f"FLT-05 steps of the shortest failing run (profile {real}; replay with {replay}); "
            f"it did not fail on every replay, so it depends on timing "
            f"(Hypothesis: {first_line(exc)})",
        )
        raise violation from exc
    finally:
        last = bound.last
        if last is not None:
            last.close_all()  # a safety net: teardown closes it, unless it never ran
        run.machine = last
        _dedupe(props, "fdpass_fault_layer")
    return run


def _fd_passing_impl(factory: Callable[[], object]) -> bool:
    probe = factory()
    try:
        return is_fd_passing(probe)
    finally:
        close = getattr(probe, "close", None)
        if callable(close):
            close()


def _steps_of(bound: type[ProxyMachine], exc: InvariantViolation) -> list[str]:
    return next((steps for steps, v in bound.failures if v is exc), [])


def _report(
    props: list[tuple[str, object]], exc: InvariantViolation, steps: list[str], title: str
) -> None:
    text = "\n".join(steps)
    props.append(("fdpass_steps", text))
    props.append(("fdpass_invariant", exc.invariant))
    note = f"{title}:\n{text}"
    if hasattr(exc, "add_note"):  # Python 3.11+
        exc.add_note(note)
    else:  # Python 3.10: PEP 678's attribute itself, as Hypothesis and pytest use it there
        exc.__notes__ = [*getattr(exc, "__notes__", []), note]  # type: ignore[attr-defined]


def _dedupe(props: list[tuple[str, object]], key: str) -> None:
    seen: set[object] = set()
    kept: list[tuple[str, object]] = []
    for name, value in props:
        if name == key:
            if value in seen:
                continue
            seen.add(value)
        kept.append((name, value))
    props[:] = kept
