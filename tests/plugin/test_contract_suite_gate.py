"""A ContractSuite subclass in a project's own tree is the same gate as --fdpass-impl.

The proxy under test is the reference MasterProxy with two real defects: it
binds an ephemeral port when given ``None`` (SP-07, a MUST) and accepts the
worker count ``"2"`` (FP-16, a SHOULD).
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from typing import Any

import pytest

from fdpass_conformance import cases as case_table
from fdpass_conformance.catalogue import REQUIREMENTS
from fdpass_conformance.report.model import id_ranges

from .helpers import INNER_TIMEOUT, SLOPPY, SLOPPY_SUITE

pytestmark = pytest.mark.timeout(4 * INNER_TIMEOUT)

ONLY = "--fdpass-only=SP-07,FP-16"


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makepyfile(sloppy=SLOPPY, test_sloppy=SLOPPY_SUITE)
    return pytester


def verdicts(path: Any) -> dict[str, dict[str, str]]:
    report = json.loads(path.read_text())
    return {
        impl["id"]: {
            r["id"]: r["verdict"] for r in impl["requirements"] if r["result"] != "not-run"
        }
        for impl in report["implementations"]
    }


EXPECTED = {"Sloppy": {"SP-07": "fail", "FP-16": "warn"}}
#: The checks --fdpass-only=SP-07,FP-16 runs, one failing (SP-07) and one a warning (FP-16).
CHECKS = sum(
    map(len, (case_table.BAD_PORTS, case_table.BAD_WORKER_COUNTS, case_table.BAD_WORKER_INDEXES))
)
PASSED = CHECKS - 2
#: Requirements --fdpass-only=SP-07,FP-16 leaves out.
NOT_RUN = len(REQUIREMENTS) - 2
NOT_RUN_RANGES = id_ranges([r.id for r in REQUIREMENTS if r.id not in ("SP-07", "FP-16")])


@pytest.mark.parametrize("xdist", [[], ["-n", "2"]], ids=["serial", "xdist"])
def test_should_warns_must_fails_with_table_report_and_junit(
    project: pytest.Pytester, xdist: list[str]
) -> None:
    report, junit = project.path / "r.json", project.path / "j.xml"
    result = project.runpytest_subprocess(
        "-p", "no:cacheprovider", *xdist, ONLY, f"--fdpass-report={report}",
        f"--junitxml={junit}", timeout=INNER_TIMEOUT,
    )  # fmt: skip
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.assert_outcomes(failed=1, xfailed=1, passed=PASSED)
    result.stdout.fnmatch_lines(
        [
            "*fdpass: levels: MUST fails, SHOULD warns",
            "SP-07   MUST   fail    test_invalid_port_is_rejected[[]None[]]: *create_socket(None)"
            " returned a listening socket on 127.0.0.1:* instead of raising",
            "FP-16   SHOULD warn    test_invalid_worker_count[[]*2*[]]: *returned without raising",
            f"{NOT_RUN} not-run: {NOT_RUN_RANGES}",
            f"Sloppy: 1 fail, *{NOT_RUN} not-run, 1 warn",
        ],
        consecutive=False,
    )
    assert "MUST   not-run" not in result.stdout.str(), "not-run rows are one line"
    assert verdicts(report) == EXPECTED
    cases = ET.parse(junit).getroot().iter("testcase")
    props = [
        {(p.get("name"), p.get("value")) for p in case.iter("property")}
        for case in cases
        if "test_invalid_worker_count" in str(case.get("name"))
    ]
    assert len(props) == len(case_table.BAD_WORKER_COUNTS) and all(
        {("requirement", "FP-16"), ("fdpass_impl", "Sloppy")} <= p for p in props
    ), props


def test_strict_makes_the_should_fail(project: pytest.Pytester) -> None:
    result = project.runpytest_subprocess(
        "-p", "no:cacheprovider", ONLY, "--fdpass-strict", timeout=INNER_TIMEOUT
    )
    result.assert_outcomes(failed=2, passed=PASSED)
    result.stdout.fnmatch_lines(["FP-16   SHOULD warn    *"])


def test_same_verdicts_as_fdpass_impl(project: pytest.Pytester) -> None:
    report = project.path / "impl.json"
    result = project.runpytest_subprocess(
        "-p", "no:cacheprovider", ONLY, "--fdpass-impl=sloppy:Sloppy",
        f"--fdpass-report={report}", timeout=INNER_TIMEOUT,
    )  # fmt: skip
    result.assert_outcomes(failed=1, xfailed=1, passed=PASSED)
    assert verdicts(report) == EXPECTED


def test_a_project_without_suites_gets_no_table(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_plain="""
        import pytest

        @pytest.mark.requirement("FP-16")
        def test_mine():
            assert False
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=INNER_TIMEOUT)
    result.assert_outcomes(failed=1)
    assert "fdpass conformance" not in result.stdout.str()
