"""The fdpass_leak_check fixture catches real leaks, names them, and cleans them up."""

from __future__ import annotations

import re
import subprocess

import pytest

pytestmark = pytest.mark.timeout(120)

LEAKY = """
import os, time
from fdpass_conformance.sysv import MessageQueue

def test_queue(fdpass_leak_check):
    q = MessageQueue(mode=0o640)
    print("QUEUE", q.id)

def test_fd(fdpass_leak_check):
    r, w = os.pipe()

def test_process(fdpass_leak_check):
    pid = os.fork()
    if pid == 0:
        time.sleep(60)
        os._exit(0)
    print("CHILD", pid)

def test_clean(fdpass_leak_check):
    r, w = os.pipe()
    os.close(r)
    os.close(w)
"""


def test_leak_check_names_and_removes_leaks(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_leaky=LEAKY)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-s", "-p", "no:randomly")
    result.assert_outcomes(passed=4, errors=3)
    out = result.stdout.str()
    queue_id = re.search(r"QUEUE (\d+)", out)
    assert queue_id is not None
    assert re.search(rf"queue id={queue_id.group(1)} key=0x0+ mode=0640 owner=\S+", out), out
    assert "test_leaky.py::test_queue" in out
    assert re.search(r"fd \d+ \(pipe", out)
    child = re.search(r"CHILD (\d+)", out)
    assert child is not None and re.search(rf"process.*{child.group(1)}|pid {child.group(1)}", out)
    ipcs = subprocess.run(["ipcs", "-q"], capture_output=True, text=True, timeout=10).stdout
    assert not re.search(rf"^0x\S+\s+{queue_id.group(1)}\s", ipcs, re.M), "the leak was not removed"
