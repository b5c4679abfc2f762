"""fork_calls: a forked child's calls into a proxy, reported step by step (FP-15, FP-16)."""

from __future__ import annotations

import os
import socket
import time
from typing import Any

import pytest

from fdpass_conformance.harness.childcalls import LISTENER_ARG, fork_calls


class Toy:
    """Each method does what its name says, in the child."""

    def ok(self) -> None:
        pass

    def opens(self) -> None:
        os.pipe()  # two fds, kept: the count after the call shows them

    def refuses(self, value: object) -> None:
        raise ValueError(f"bad value {value!r}")

    def gets_listener(self, listener: object) -> None:
        if not isinstance(listener, socket.socket):
            raise TypeError(f"got {listener!r}")

    def hangs(self) -> None:
        time.sleep(60)


def _run(calls: list[tuple[str, list[object]]], timeout: float = 5.0) -> dict[str, Any]:
    with socket.socket() as listener:
        return fork_calls(
            Toy(), listener, calls, impl_pid=os.getpid, in_child=lambda: None, timeout=timeout
        )


def test_steps_stop_at_the_first_exception_with_its_type_and_mro() -> None:
    report = _run([("ok", []), ("refuses", [3]), ("ok", [])])
    assert [s["method"] for s in report["steps"]] == ["ok", "refuses"]
    step = report["steps"][1]
    assert (step["raised"], step["message"]) == ("ValueError", "bad value 3")
    assert "Exception" in step["mro"]
    assert report["hung"] == ""


def test_fds_are_counted_around_the_last_call_only() -> None:
    report = _run([("opens", []), ("opens", [])])
    before, after = report["fds"]
    assert after == before + 2, report


def test_the_listener_placeholder_is_the_real_listener() -> None:
    report = _run([("gets_listener", [LISTENER_ARG])])
    assert report["steps"] == [{"method": "gets_listener", "raised": None}]


@pytest.mark.timeout(30)
def test_a_hanging_call_is_killed_and_reported() -> None:
    started = time.monotonic()
    report = _run([("hangs", [])], timeout=0.5)
    assert report["hung"] and report["steps"] == [], report
    assert time.monotonic() - started < 5.0
