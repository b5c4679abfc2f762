"""docs/report.schema.json describes the JSON report exactly, and every report format is written.

A real conformance session (a small one: ForkSharedProxy, requirements
SP-01..SP-09) writes each format; the JSON must validate against the
published schema, and the Markdown and HTML files must hold one row per
requirement. A report built in-process covers the verdicts such a run
cannot produce (fail, warn, strict) so that no branch of the schema is
untested.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped, unused-ignore]
import pytest

from fdpass_conformance.catalogue import REQUIREMENTS
from fdpass_conformance.report import model
from fdpass_conformance.report.baseline import EVERY, Baseline
from fdpass_conformance.report.model import REPORT_VERSION, RESULTS, VERDICTS, Report

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "docs" / "report.schema.json"
RUN = ["--fdpass-impl=reference:ForkSharedProxy", "--fdpass-only=SP-0", "-p", "no:cacheprovider"]
#: SP-01..SP-09: what --fdpass-only=SP-0 selects.
SELECTED = [r.id for r in REQUIREMENTS if r.id.startswith("SP-0")]
#: Seconds an inner pytest run may take.
INNER_TIMEOUT = 300


def schema() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    return loaded


def validate(instance: object) -> None:
    jsonschema.Draft202012Validator(schema()).validate(instance)


def errors(instance: object) -> list[str]:
    validator = jsonschema.Draft202012Validator(schema())
    return [e.message for e in validator.iter_errors(instance)]


def test_schema_is_a_valid_draft_2020_12_schema() -> None:
    jsonschema.Draft202012Validator.check_schema(schema())


def test_schema_enums_follow_the_model() -> None:
    """The schema names the same results, verdicts and version as report/model.py."""
    defs = schema()["$defs"]
    assert set(defs["result"]["enum"]) == set(RESULTS)
    assert set(defs["verdict"]["enum"]) == set(VERDICTS)
    assert set(defs["implementation"]["properties"]["counts"]["required"]) == set(VERDICTS)
    assert schema()["properties"]["version"]["const"] == REPORT_VERSION
    assert set(defs["test"]["properties"]["outcome"]["enum"]) == set(RESULTS) - {"not-run"}


@pytest.mark.timeout(INNER_TIMEOUT + 30)
@pytest.mark.parametrize("suffix", [".json", ".md", ".html"])
def test_a_conformance_session_writes_the_report(pytester: pytest.Pytester, suffix: str) -> None:
    out = pytester.path / f"r{suffix}"
    result = pytester.runpytest_subprocess(*RUN, f"--fdpass-report={out}", timeout=INNER_TIMEOUT)
    assert result.ret == 0, "\n".join(result.outlines[-30:])
    assert out.is_file(), f"no report at {out}:\n" + "\n".join(result.outlines[-30:])
    text = out.read_text(encoding="utf-8")
    if suffix == ".json":
        report = json.loads(text)
        validate(report)
        [impl] = report["implementations"]
        assert impl["id"] == "ForkSharedProxy"
        by_id = {r["id"]: r for r in impl["requirements"]}
        assert list(by_id) == [r.id for r in REQUIREMENTS], "every requirement, in catalogue order"
        for rid in SELECTED:
            assert by_id[rid]["verdict"] == "pass", by_id[rid]
        assert {by_id[r.id]["verdict"] for r in REQUIREMENTS if r.id not in SELECTED} == {"not-run"}
        assert report["passed"] is True
        assert sum(impl["counts"].values()) == len(REQUIREMENTS)
    elif suffix == ".md":
        assert text.startswith("## fd-passing proxy conformance: PASS")
        counts = (
            f"| ForkSharedProxy | pass | {len(SELECTED)} | {len(REQUIREMENTS) - len(SELECTED)} |"
        )
        assert counts in text, text
        assert "No requirement failed, warned, errored or was blocked." in text
    else:
        assert text.startswith("<!DOCTYPE html>")
        for req in REQUIREMENTS:
            verdict = "pass" if req.id in SELECTED else "not-run"
            row = re.search(rf"<tr class='req' id='req-{req.id}'.*?</tr>", text)
            assert row is not None and f"<td class='cell v-{verdict}'" in row.group(0), req.id


def _outcome(rid: str, outcome: str, reason: str = "", layer: str = "") -> model.TestOutcome:
    return model.TestOutcome(f"suite.py::TestContract::test_{rid}[Impl]", outcome, reason, layer)


@pytest.mark.parametrize("strict", [False, True], ids=["default", "strict"])
def test_every_verdict_validates(strict: bool) -> None:
    report = Report(
        strict,
        "global-ipcs+lock (disabled by FDPASS_CONFORMANCE_NO_IPC_NAMESPACE)",
        {"kernel": "available", "syscall": "unavailable: strace not found on PATH"},
        baseline=Baseline("known.txt", {"Impl": frozenset({"IPC-03", "IPC-04"})}),
    )
    report.record("Impl", ["SP-01"], _outcome("SP-01", "pass"))
    report.record("Impl", ["SP-02"], _outcome("SP-02", "fail", "AssertionError: leaked fd 7"))
    report.record("Impl", ["SP-13"], _outcome("SP-13", "fail", "worker 2 served nothing"))
    report.record("Impl", ["SP-15"], _outcome("SP-15", "n-a", "n/a: no SO_REUSEPORT"))
    report.record("Impl", ["FP-01", "FP-02"], _outcome("FP-01", "skip", "is_supported() False"))
    report.record("Impl", ["FLT-01"], _outcome("FLT-01", "pass", layer="syscall:sendmsg:ENOBUFS"))
    blocked = _outcome("SP-16", "blocked", "blocked by FP-02: no connection reached a worker")
    blocked.blocked_by = "FP-02"
    report.record("Impl", ["SP-16"], blocked)
    report.record("Impl", ["IPC-02"], _outcome("IPC-02", "error", "AttributeError: x"))
    report.record("Impl", ["IPC-03"], _outcome("IPC-03", "fail", "queue left: 0600"))
    report.record("Impl", ["IPC-04"], _outcome("IPC-04", "pass"))
    report.record("Other", ["SP-01"], _outcome("SP-01", "pass"))
    data = report.to_dict()
    validate(data)
    verdicts = {r["id"]: r["verdict"] for r in data["implementations"][0]["requirements"]}
    assert verdicts["SP-02"] == "fail" and verdicts["SP-13"] == "warn"
    assert verdicts["FP-02"] == "skip" and verdicts["IPC-01"] == "not-run"
    assert verdicts["SP-16"] == "blocked" and verdicts["IPC-02"] == "error"
    assert verdicts["IPC-03"] == "known" and data["implementations"][0]["fixed"] == ["IPC-04"]
    assert data["baseline"] == {"source": "known.txt", "strict": False}
    assert data["passed"] is False


def test_known_failures_alone_pass_unless_the_baseline_is_strict() -> None:
    report = Report(False, "ipc-namespace", {"kernel": "available"})
    report.baseline = Baseline("b.txt", {EVERY: frozenset({"SP-02", "SP-03"})})
    report.record("Impl", ["SP-02"], _outcome("SP-02", "fail", "leaked fd 7"))
    report.record("Impl", ["SP-03"], _outcome("SP-03", "pass"))
    validate(report.to_dict())
    assert report.passed() is True
    report.baseline_strict = True
    assert report.passed() is False and report.to_dict()["passed"] is False


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("version",), 1),
        (("tool",), "other"),
        (("implementations", 0, "counts", "warn"), -1),
        (("implementations", 0, "requirements", 0, "verdict"), "warn"),
        (("implementations", 0, "requirements", 0, "verdict"), "known"),
        (("implementations", 0, "fixed"), ["fp-1"]),
        (("baseline",), {"source": ""}),
        (("implementations", 0, "requirements", 0, "tests"), []),
        (("implementations", 0, "requirements", 0, "tests", 0, "outcome"), "not-run"),
        (("implementations", 0, "requirements", 0, "tests", 0, "blocked_by"), "the network"),
        (("implementations", 0, "requirements", 0, "extra"), True),
        (("isolation",), "none"),
        (("fault_layers", "kernel"), "maybe"),
    ],
    ids=lambda v: ".".join(map(str, v)) if isinstance(v, tuple) else repr(v),
)
def test_schema_rejects_what_the_model_never_writes(path: tuple[Any, ...], value: object) -> None:
    report = Report(False, "ipc-namespace", {"kernel": "available"})
    report.record("Impl", ["SP-01"], _outcome("SP-01", "pass"))
    data: Any = report.to_dict()
    validate(data)
    target = data
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    assert errors(data), f"setting {path} to {value!r} should be invalid"
