"""The CI gate recipe of docs/ci.md, run on the example downstream project.

``examples/downstream`` is a third-party-style project: ``acme_proxy`` (an
fd-passing proxy written against the contract alone) and
``acme_proxy_broken`` (the same with one defect: received connections are
inheritable). The gate command of the recipe must pass the first with exit
code 0 and no failing MUST requirement, and fail the second with exit code 1
and exactly FP-05 and SP-20 failing, read from the JSON report.

The project also adopts the gate the other ways docs/ci.md describes: its
``conformance-baseline.txt`` holds the broken proxy's known failure (the gate
then passes, and fails again on any other failure), ``pytest tests/`` runs
``ContractSuite`` as the same gate beside the project's own ``proxy_server``
fixture, and the job-summary Markdown shows the verdict and the failing rows.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "downstream"
GOOD = "acme_proxy:AcmeMasterProxy"
BROKEN = "acme_proxy_broken:AcmeMasterProxy"
#: The one defect of acme_proxy_broken, and the requirements that must catch it.
BROKEN_FAILS = {"FP-05", "SP-20"}
#: Seconds one inner gate run may take (it runs about 15 s on an idle machine).
GATE_TIMEOUT = 600


@dataclass
class Gate:
    returncode: int
    output: str
    report: dict[str, Any]
    junit: ET.Element | None


def run(argv: list[str], cwd: Path, timeout: float) -> tuple[int, str]:
    """Run a command in its own session; on timeout kill its whole process group."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(EXAMPLE), env.get("PYTHONPATH")) if p)
    proc = subprocess.Popen(
        argv,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"{' '.join(argv)} did not finish within {timeout}s:\n{out[-3000:]}")
    return proc.returncode, out


def gate(impl: str, tmp_path: Path) -> Gate:
    """The recipe's command: pytest -n 2 --fdpass-impl --junitxml --fdpass-report."""
    report, junit = tmp_path / "reports" / "conformance.json", tmp_path / "reports" / "junit.xml"
    code, out = run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-n",
            "2",
            "-p",
            "no:cacheprovider",
            f"--fdpass-impl={impl}",
            f"--junitxml={junit}",
            f"--fdpass-report={report}",
        ],
        tmp_path,
        GATE_TIMEOUT,
    )
    assert report.is_file(), f"no report written (exit {code}):\n{out[-3000:]}"
    data = json.loads(report.read_text(encoding="utf-8"))
    root = ET.parse(junit).getroot() if junit.is_file() else None
    return Gate(code, out, data, root)


def verdicts(data: dict[str, Any]) -> dict[str, tuple[str, str]]:
    [impl] = data["implementations"]
    assert impl["id"] == "AcmeMasterProxy"
    return {r["id"]: (r["level"], r["verdict"]) for r in impl["requirements"]}


@pytest.mark.timeout(GATE_TIMEOUT + 60)
def test_the_good_proxy_passes_every_must(tmp_path: Path) -> None:
    result = gate(GOOD, tmp_path)
    assert result.returncode == 0, result.output[-3000:]
    assert result.report["passed"] is True
    found = verdicts(result.report)
    failing = {rid for rid, (_, verdict) in found.items() if verdict in ("fail", "warn")}
    assert not failing, f"the good proxy fails {sorted(failing)}:\n{result.output[-3000:]}"
    ran = {rid for rid, (_, verdict) in found.items() if verdict != "not-run"}
    # Every SP and FP requirement was checked: all pass, but SP-15 (no SO_REUSEPORT).
    assert {rid for rid in ran if rid.startswith(("SP-", "FP-"))} == {
        rid for rid in found if rid.startswith(("SP-", "FP-"))
    }
    assert found["SP-15"] == ("MUST", "n-a")
    assert all(found[rid][1] in ("pass", "n-a") for rid in ran)
    assert result.junit is not None, "--junitxml wrote nothing"
    props = {
        p.get("value") for p in result.junit.iter("property") if p.get("name") == "requirement"
    }
    assert {"FP-05", "SP-20", "SP-01"} <= props


@pytest.mark.timeout(GATE_TIMEOUT + 60)
def test_the_broken_proxy_fails_the_gate_on_exactly_its_defect(tmp_path: Path) -> None:
    result = gate(BROKEN, tmp_path)
    assert result.returncode == 1, result.output[-3000:]
    assert result.report["passed"] is False
    found = verdicts(result.report)
    failing = {rid for rid, (_, verdict) in found.items() if verdict == "fail"}
    assert failing == BROKEN_FAILS, result.output[-3000:]
    assert all(found[rid][0] == "MUST" for rid in failing)
    assert not [rid for rid, (_, verdict) in found.items() if verdict == "warn"]
    for rid in sorted(BROKEN_FAILS):
        assert f"{rid:<7} MUST   fail" in result.output, rid
    assert result.junit is not None
    failed_cases = [
        case for case in result.junit.iter("testcase") if case.find("failure") is not None
    ]
    failed_reqs = {
        p.get("value")
        for case in failed_cases
        for p in case.iter("property")
        if p.get("name") == "requirement"
    }
    assert failed_reqs == BROKEN_FAILS


@pytest.mark.timeout(GATE_TIMEOUT + 60)
def test_the_example_project_tests_pass(tmp_path: Path) -> None:
    """``pytest tests/`` of the downstream project: its fixture-based tests (shown in
    docs/writing-tests.md), its own ``proxy_server`` fixture, and ContractSuite as the gate."""
    summary, junit = tmp_path / "summary.md", tmp_path / "junit.xml"
    code, out = run(
        [sys.executable, "-m", "pytest", "-n", "2", "-p", "no:cacheprovider", "tests/",
         f"--junitxml={junit}", f"--fdpass-report={summary}"],
        EXAMPLE,
        GATE_TIMEOUT,
    )  # fmt: skip
    assert code == 0, out[-3000:]
    cases = {
        (str(c.get("classname")).rsplit(".", 1)[-1], str(c.get("name"))): c
        for c in ET.parse(junit).getroot().iter("testcase")
    }
    own = [k for k in cases if k[0] in ("test_acme_fixtures", "test_acme_own")]
    assert len(own) == 7, sorted(cases)[:20]
    assert all(list(cases[k]) == [] for k in own), "a project test did not pass"
    # ContractSuite is the gate: its table, and the job summary of it.
    assert "fdpass conformance: AcmeMasterProxy" in out, out[-3000:]
    text = summary.read_text(encoding="utf-8")
    assert text.startswith("## fd-passing proxy conformance: PASS"), text
    assert "| AcmeMasterProxy | pass |" in text
    assert "No requirement failed, warned, errored or was blocked." in text


@pytest.mark.timeout(GATE_TIMEOUT + 60)
def test_the_baseline_holds_the_broken_proxys_known_failure(tmp_path: Path) -> None:
    summary = tmp_path / "summary.md"
    baseline = EXAMPLE / "conformance-baseline.txt"
    code, out = run(
        [sys.executable, "-m", "pytest", "-n", "2", "-p", "no:cacheprovider",
         f"--fdpass-impl={BROKEN}", f"--fdpass-baseline={baseline}", "--fdpass-baseline-strict",
         f"--fdpass-report={summary}"],
        tmp_path,
        GATE_TIMEOUT,
    )  # fmt: skip
    assert code == 0, out[-3000:]
    for rid in sorted(BROKEN_FAILS):
        assert f"{rid:<7} MUST   known" in out, rid
    text = summary.read_text(encoding="utf-8")
    assert text.startswith("## fd-passing proxy conformance: PASS"), text
    rows = re.findall(r"^\| AcmeMasterProxy \| (\S+) \| MUST \| (\S+) \|", text, re.M)
    assert sorted(rows) == [(rid, "known") for rid in sorted(BROKEN_FAILS)], text


@pytest.mark.timeout(300)
def test_a_failure_the_baseline_does_not_list_fails_the_gate(tmp_path: Path) -> None:
    partial = tmp_path / "baseline.txt"
    partial.write_text("FP-05\n", encoding="utf-8")
    summary = tmp_path / "summary.md"
    code, out = run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", f"--fdpass-impl={BROKEN}",
         "--fdpass-only=FP-05,SP-20", f"--fdpass-baseline={partial}",
         f"--fdpass-report={summary}"],
        tmp_path,
        240,
    )  # fmt: skip
    assert code == 1, out[-3000:]
    assert "SP-20   MUST   fail" in out and "FP-05   MUST   known" in out, out[-3000:]
    text = summary.read_text(encoding="utf-8")
    assert text.startswith("## fd-passing proxy conformance: FAIL")
    assert "| AcmeMasterProxy | SP-20 | MUST | **fail** |" in text


def test_the_example_workflow_follows_the_recipe() -> None:
    workflow = (EXAMPLE / ".github" / "workflows" / "conformance.yml").read_text(encoding="utf-8")
    for piece in (
        f"--fdpass-impl={GOOD}",
        "--junitxml=reports/junit.xml",
        "--fdpass-report=reports/conformance.json",
        "--fdpass-report=reports/summary.md",
        'cat reports/summary.md >> "$GITHUB_STEP_SUMMARY"',
        "python -m pip install -e '.[test]'",
        "sudo -E",
        "if: always()",
    ):
        assert piece in workflow, piece
    pyproject = (EXAMPLE / "pyproject.toml").read_text(encoding="utf-8")
    assert 'test = ["fdpass-conformance' in pyproject
    ci_doc = (ROOT / "docs" / "ci.md").read_text(encoding="utf-8")
    assert '--8<-- "examples/downstream/.github/workflows/conformance.yml"' in ci_doc


def test_the_example_proxy_imports_nothing_from_the_toolkit() -> None:
    """A third party's proxy: the contract is structural, no toolkit import is needed."""
    toolkit = re.compile(r"^\s*(from|import)\s+(fdpass_conformance|reference)\b", re.MULTILINE)
    paths = sorted((EXAMPLE / "acme_proxy").glob("*.py"))
    assert paths
    for path in paths:
        assert not toolkit.search(path.read_text(encoding="utf-8")), path
