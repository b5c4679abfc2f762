"""The layer table for the report, and the fork-with-deadline helpers every layer test uses."""

from __future__ import annotations

import os
import sys
import time

import pytest

from fdpass_conformance import faults
from fdpass_conformance.processes import call_in_child, try_reap, wait_pid


def test_layers_describe_all_three_with_a_status() -> None:
    assert set(faults.LAYERS) == {"kernel", "syscall", "python"}
    report = faults.layer_report()
    assert report["python"] == "available"
    for name, layer in faults.LAYERS.items():
        ok, why = layer.available()
        assert report[name].startswith("available" if ok else "unavailable: ")
        assert layer.description
        if not ok:
            assert why and "\n" not in why
    if sys.platform.startswith("linux"):
        assert report["kernel"] == "available"


@pytest.mark.timeout(30)
def test_call_in_child_returns_output_status_and_exceptions() -> None:
    hello = call_in_child(lambda: b"hello")
    assert (hello.status, hello.output) == (0, b"hello")

    def boom() -> bytes:
        raise OSError(28, "No space left on device")

    result = call_in_child(boom)
    assert result.status == 1
    assert result.output == b"OSError: [Errno 28] No space left on device"


@pytest.mark.timeout(30)
def test_call_in_child_kills_a_child_past_its_deadline() -> None:
    def hang() -> bytes:
        time.sleep(60)
        return b""

    start = time.monotonic()
    with pytest.raises(TimeoutError, match=r"did not finish within 0\.3s; killed it") as info:
        call_in_child(hang, timeout=0.3)
    assert time.monotonic() - start < 5
    pid = int(str(info.value).split()[1])
    with pytest.raises(ChildProcessError):  # killed and already reaped: no zombie left
        os.waitpid(pid, os.WNOHANG)


@pytest.mark.timeout(30)
def test_wait_pid_without_kill_leaves_the_child_then_reaps_it() -> None:
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            time.sleep(0.5)
        finally:
            os._exit(3)
    try:
        with pytest.raises(TimeoutError, match="did not exit within"):
            wait_pid(pid, 0.05, kill=False)
        assert wait_pid(pid, 10) == 3
    finally:
        try_reap(pid)
