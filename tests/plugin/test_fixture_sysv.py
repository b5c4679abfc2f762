"""fdpass_sysv_queue and fdpass_sysv_queue_factory: private 0600 queues, gone after the test."""

from __future__ import annotations

import contextlib

import pytest

from fdpass_conformance.sysv import msgrm

from .helpers import INNER_TIMEOUT, needs_ipcs, queue_perms

pytestmark = [pytest.mark.timeout(120), needs_ipcs]

USES_QUEUES = """
import pathlib
import subprocess

from fdpass_conformance.sysv import MessageQueue

IDS = pathlib.Path("queue-ids.txt")


def seen(queue):
    with IDS.open("a") as f:
        f.write(f"{queue.id}\\n")


def perms(qid):
    out = subprocess.run(["ipcs", "-q"], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        fields = line.split()
        if len(fields) >= 4 and fields[1] == str(qid):
            return fields[3]
    return None


def test_queue(fdpass_sysv_queue):
    seen(fdpass_sysv_queue)
    assert isinstance(fdpass_sysv_queue, MessageQueue)
    assert perms(fdpass_sysv_queue.id) == "600"
    fdpass_sysv_queue.send(1, b"ping")
    assert fdpass_sysv_queue.receive() == (1, b"ping")


def test_factory(fdpass_sysv_queue_factory):
    queues = [fdpass_sysv_queue_factory() for _ in range(3)]
    for queue in queues:
        seen(queue)
    assert len({q.id for q in queues}) == 3
    assert [perms(q.id) for q in queues] == ["600"] * 3


def test_failing_test_still_removes(fdpass_sysv_queue):
    seen(fdpass_sysv_queue)
    raise AssertionError("fails on purpose")
"""


def test_queues_exist_during_the_test_and_are_gone_after(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_queues=USES_QUEUES)
    ids_file = pytester.path / "queue-ids.txt"
    try:
        result = pytester.runpytest_subprocess(timeout=INNER_TIMEOUT)
        result.assert_outcomes(passed=2, failed=1)
        ids = [int(line) for line in ids_file.read_text().split()]
        assert len(ids) == 5
        left = sorted(set(ids) & set(queue_perms()))
        assert left == [], f"queues left behind: {left}"
    finally:
        if ids_file.exists():
            for qid in map(int, ids_file.read_text().split()):
                with contextlib.suppress(OSError):
                    msgrm(qid)
