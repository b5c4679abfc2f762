"""The fdpass_leak_check fixture catches real leaks, names them, and cleans them up."""

from __future__ import annotations

import re
import subprocess

import pytest

from fdpass_conformance.harness.namespace import IPC_NAMESPACE_METHOD

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


NEIGHBOUR = """
import os, threading
from fdpass_conformance.sysv import MessageQueue

# A thread started before the fixture stays in the host's IPC namespace: it
# stands in for a test on another pytest-xdist worker, which takes no lock.
asked, made, done = threading.Event(), threading.Event(), threading.Event()

def neighbour():
    asked.wait(30)
    queue = MessageQueue(mode=0o600)
    print("NEIGHBOUR", queue.id)
    made.set()
    done.wait(30)
    queue.remove()

thread = threading.Thread(target=neighbour, daemon=True)
thread.start()

def test_neighbour(fdpass_leak_check):
    home = os.readlink(f"/proc/{os.getpid()}/task/{thread.native_id}/ns/ipc")
    print("HOME", home, "TEST", os.readlink("/proc/thread-self/ns/ipc"))
    asked.set()
    assert made.wait(30)

def test_after():
    print("AFTER", os.readlink("/proc/thread-self/ns/ipc"))
    done.set()
    thread.join(30)
"""


@pytest.mark.skipif(
    IPC_NAMESPACE_METHOD != "ipc",
    reason="the leak check moves into its own IPC namespace only as root with CAP_SYS_ADMIN",
)
def test_a_queue_made_beside_the_test_is_not_its_leak(pytester: pytest.Pytester) -> None:
    """The CI failure this fixes: a project test using ``fdpass_sysv_queue`` ran on one
    xdist worker while another's ``fdpass_leak_check`` blamed its queue on a test."""
    pytester.makepyfile(test_neighbour=NEIGHBOUR)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-s", "-p", "no:randomly")
    result.assert_outcomes(passed=2)
    out = result.stdout.str()
    assert re.search(r"NEIGHBOUR \d+", out), out
    seen = re.search(r"HOME (\S+) TEST (\S+)", out)
    after = re.search(r"AFTER (\S+)", out)
    assert seen is not None and after is not None, out
    assert seen.group(1) != seen.group(2), "the test ran in the host's IPC namespace"
    assert after.group(1) == seen.group(1), "the test thread was not moved back home"
