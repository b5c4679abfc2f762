"""Outcomes carried as data: blocked, n-a, a toolkit error and the proxy's own failure.

A test tree of throwaway contract checks runs against the reference through the
plugin; the JSON report must say, for each, what happened: a check that raises
``blocked`` is ``blocked`` with its blocker, one that hits a bug of the toolkit
(a ``KeyError`` in the check's own code) is ``error`` with the traceback in
``details``, while the same kind of exception raised by the implementation
inside the server's master is the proxy's ``fail``, and a failed assertion is
a ``fail`` whose details hold the whole message; a check cut off by
pytest-timeout says what it was still waiting for.
"""

from __future__ import annotations

import json

import pytest

from .helpers import INNER_TIMEOUT

pytestmark = pytest.mark.timeout(INNER_TIMEOUT * 3)

CHECKS = """
import time

import pytest
from fdpass_conformance.harness.server import running
from fdpass_conformance.outcomes import blocked, not_applicable
from reference import MasterProxy


class TypeErrorProxy(MasterProxy):
    def create_socket(self, port, protocol="tcp"):
        raise TypeError("create_socket: the proxy's own bug")


class SleepyProxy(MasterProxy):
    def create_socket(self, port, protocol="tcp"):
        time.sleep(30)


@pytest.mark.requirement("SP-05")
def test_hangs(fdpass_impl):
    with running(SleepyProxy, workers=1):
        pass


@pytest.mark.requirement("SP-16")
def test_blocked(fdpass_impl):
    blocked("FP-02", "no connection reached a worker")


@pytest.mark.requirement("SP-15")
def test_not_applicable(fdpass_impl):
    not_applicable("the listener has no SO_REUSEPORT")


@pytest.mark.requirement("SP-17")
def test_toolkit_bug(fdpass_impl):
    evidence = {}
    evidence["missing"]


@pytest.mark.requirement("SP-03")
def test_implementation_raises(fdpass_impl):
    with running(TypeErrorProxy, workers=1) as srv:
        pass


@pytest.mark.requirement("SP-04")
def test_observed(fdpass_impl):
    assert 1 + 1 == 3, "the worker saw 3 fds\\nsecond line of evidence"


@pytest.mark.requirement("FP-01")
def test_missing_method(fdpass_impl):
    with running(MasterProxy, workers=1, namespace=None) as srv:
        srv.call("no_such_method")
"""


def test_each_outcome_is_reported_as_what_happened(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_checks=CHECKS)
    pytester.makeini("[pytest]\nfdpass_timeout = 3\n")
    report = pytester.path / "r.json"
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--fdpass-impl=reference:MasterProxy",
        f"--fdpass-report={report}", "test_checks.py", timeout=INNER_TIMEOUT * 2,
    )  # fmt: skip
    out = "\n".join(result.outlines[-40:])
    [impl] = json.loads(report.read_text())["implementations"]
    by_id = {r["id"]: r for r in impl["requirements"]}

    def only(rid: str) -> dict[str, str]:
        [test] = by_id[rid]["tests"]
        return dict(test)

    assert by_id["SP-16"]["result"] == "blocked", out
    assert only("SP-16")["blocked_by"] == "FP-02"
    assert only("SP-16")["reason"] == "blocked by FP-02: no connection reached a worker"
    assert by_id["SP-15"]["result"] == "n-a", out
    assert only("SP-15")["reason"] == "n/a: the listener has no SO_REUSEPORT"
    assert by_id["SP-17"]["result"] == "error", out
    assert "KeyError: 'missing'" in only("SP-17")["details"]
    assert "test_checks.py" in only("SP-17")["details"], only("SP-17")["details"]
    assert by_id["SP-03"]["result"] == "fail", out  # the proxy's TypeError: its outcome
    assert "the proxy's own bug" in only("SP-03")["reason"]
    assert by_id["SP-04"]["result"] == "fail", out
    assert "second line of evidence" in only("SP-04")["details"]
    assert by_id["SP-05"]["result"] == "fail", out  # cut off by pytest-timeout
    assert only("SP-05")["reason"].startswith("Timeout (>3.0s): still waiting in "), only("SP-05")
    assert "called from test_hangs" in only("SP-05")["reason"], only("SP-05")
    assert by_id["FP-01"]["result"] == "blocked", out  # a method the proxy lacks
    assert only("FP-01")["blocked_by"] == "SP-01"
    assert result.ret == pytest.ExitCode.TESTS_FAILED  # an error fails the gate
    # FP-02 did not run here, so nothing in this report explains SP-16's block: said, and
    # counted against the gate, so that --fdpass-only cannot hide a root cause.
    assert "SP-16 blocked by FP-02, which did not fail in this run" in result.stdout.str()
    assert json.loads(report.read_text())["passed"] is False
    table = [line for line in result.outlines if line[:3] in ("SP-", "FP-")]
    rows = {line.split()[0]: line for line in table if line.split()[1] in ("MUST", "SHOULD")}
    assert rows["SP-17"].split()[2] == "error", rows["SP-17"]
    assert rows["SP-16"].split()[2] == "blocked", rows["SP-16"]
