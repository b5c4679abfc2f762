"""Baselines: adopt the gate while still failing, and hold the line from there.

Inner runs of the Sloppy proxy (SP-07 fails, a MUST; FP-16 fails, a SHOULD)
as a ContractSuite subclass; ``--fdpass-only`` keeps them to a few seconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .helpers import INNER_TIMEOUT, SLOPPY, SLOPPY_SUITE, error_lines

pytestmark = pytest.mark.timeout(4 * INNER_TIMEOUT)

ONLY = "--fdpass-only=SP-0,FP-16"


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makepyfile(sloppy=SLOPPY, test_sloppy=SLOPPY_SUITE)
    return pytester


def gate(project: pytest.Pytester, *args: str) -> pytest.RunResult:
    return project.runpytest_subprocess(
        "-p", "no:cacheprovider", ONLY, *args, timeout=INNER_TIMEOUT
    )


def assert_only(result: pytest.RunResult, failed: int = 0, xfailed: int = 0) -> None:
    """These failures and warnings, nothing else (how many checks pass follows the cases)."""
    seen = result.parseoutcomes()
    got = {k: seen.get(k, 0) for k in ("failed", "xfailed", "errors")}
    assert got == {"failed": failed, "xfailed": xfailed, "errors": 0}, seen
    assert seen.get("passed", 0) > 0, seen


def test_first_run_writes_the_baseline_then_the_gate_holds_the_line(
    project: pytest.Pytester,
) -> None:
    base = project.path / "baseline.txt"
    first = gate(project, f"--fdpass-baseline-write={base}")
    assert first.ret == pytest.ExitCode.TESTS_FAILED
    first.stdout.fnmatch_lines([f"fdpass baseline written to {base}"])
    listed = [line.split("#")[0].strip() for line in base.read_text().splitlines()]
    assert [i for i in listed if i] == ["SP-07", "FP-16"]

    held = gate(project, f"--fdpass-baseline={base}")
    assert held.ret == pytest.ExitCode.OK, held.stdout.str()
    assert_only(held, xfailed=2)
    held.stdout.fnmatch_lines(
        [
            "SP-07   MUST   known   test_invalid_port_is_rejected[[]None[]]: *instead of raising",
            "FP-16   SHOULD known   *",
            "Sloppy: 8 pass, *2 known",
        ],
        consecutive=False,
    )


def test_a_new_failure_fails_the_gate(project: pytest.Pytester) -> None:
    base = project.path / "baseline.txt"
    base.write_text("# SP-07 is not listed: its failure is new\nFP-16\n")
    result = gate(project, f"--fdpass-baseline={base}")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    assert_only(result, failed=1, xfailed=1)
    result.stdout.fnmatch_lines(["SP-07   MUST   fail    *", "FP-16   SHOULD known   *"])


def test_a_json_report_is_a_baseline_per_implementation(project: pytest.Pytester) -> None:
    report = project.path / "before.json"
    gate(project, f"--fdpass-report={report}")
    held = gate(project, f"--fdpass-baseline={report}", f"--fdpass-report={report}.after.json")
    assert held.ret == pytest.ExitCode.OK, held.stdout.str()
    after = json.loads(Path(f"{report}.after.json").read_text())
    assert after["baseline"] == {"source": str(report), "strict": False}
    assert after["passed"] is True
    verdicts = {r["id"]: r["verdict"] for r in after["implementations"][0]["requirements"]}
    assert (verdicts["SP-07"], verdicts["FP-16"], verdicts["SP-01"]) == ("known", "known", "pass")
    # Another implementation's failures are not this one's.
    data = json.loads(report.read_text())
    data["implementations"][0]["id"] = "SomeoneElse"
    report.write_text(json.dumps(data))
    assert gate(project, f"--fdpass-baseline={report}").ret == pytest.ExitCode.TESTS_FAILED


def test_a_fixed_requirement_is_listed_and_fails_only_a_strict_baseline(
    project: pytest.Pytester,
) -> None:
    base = project.path / "baseline.txt"
    base.write_text("SP-07\nFP-16\nSP-01  # fixed since\n")
    lenient = gate(project, f"--fdpass-baseline={base}")
    assert lenient.ret == pytest.ExitCode.OK
    fixed = f"fdpass baseline: Sloppy SP-01 is fixed: drop it from the baseline {base}"
    lenient.stdout.fnmatch_lines([fixed])
    strict = gate(project, f"--fdpass-baseline={base}", "--fdpass-baseline-strict", "-n", "2")
    assert strict.ret == pytest.ExitCode.TESTS_FAILED
    strict.stdout.fnmatch_lines([fixed])


@pytest.mark.parametrize(
    ("content", "args", "message"),
    [
        ("SP-07\nSP-99\n", [], "unknown requirement ID(s) SP-99 (see pytest --fdpass-list)"),
        ('{"implementations": 3}', [], "not a report written by --fdpass-report=*.json"),
        (None, [], "cannot read it: No such file or directory"),
        (None, ["--fdpass-baseline-strict"], "no --fdpass-baseline=PATH to hold to"),
    ],
    ids=["unknown-id", "not-a-report", "missing", "strict-alone"],
)
def test_a_bad_baseline_is_one_usage_error_line(
    project: pytest.Pytester, content: str | None, args: list[str], message: str
) -> None:
    base = project.path / "baseline.txt"
    if content is not None:
        base.write_text(content)
    if not args:
        args = [f"--fdpass-baseline={base}"]
    result = gate(project, *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    [line] = error_lines(result.errlines)
    assert line.startswith("ERROR: --fdpass-baseline") and message in line, line
