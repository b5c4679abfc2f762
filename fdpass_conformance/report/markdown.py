"""The report as Markdown for a CI job summary ($GITHUB_STEP_SUMMARY) or a PR comment.

Short on purpose: the verdict, the counts per implementation and only the
rows someone has to act on. The whole table is in the JSON and HTML reports.
"""

from __future__ import annotations

from .model import ATTENTION, VERDICTS, Report, RequirementResult


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _test_and_reason(res: RequirementResult) -> tuple[str, str]:
    deciding = res.deciding
    if deciding is None:
        return "", ""
    test = deciding.nodeid.rsplit("::", 1)[-1]
    reason = deciding.reason
    if deciding.blocked_by and deciding.blocked_by not in reason:
        reason = f"blocked by {deciding.blocked_by}: {reason}"
    return test, reason


def to_markdown(report: Report) -> str:
    gate = "PASS" if report.passed() else "FAIL"
    levels = "strict: SHOULD failures fail" if report.strict else "MUST fails, SHOULD warns"
    lines = [f"## fd-passing proxy conformance: {gate}", ""]
    meta = [f"levels: {levels}", f"IPC isolation: {report.isolation}"]
    if report.baseline:
        strict = " (strict)" if report.baseline_strict else ""
        meta.append(f"baseline: `{report.baseline.source}`{strict}")
    lines += [" · ".join(meta), ""]

    impls = list(report.impls.values())
    shown = [v for v in VERDICTS if any(i.counts()[v] for i in impls)]
    lines.append("| Implementation | Gate | " + " | ".join(shown) + " |")
    lines.append("|---|---|" + "---:|" * len(shown))
    for impl in impls:
        counts = impl.counts()
        gate_cell = "pass" if report.impl_passed(impl) else "**FAIL**"
        cells = [_cell(impl.impl), gate_cell, *(str(counts[v]) for v in shown)]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")

    rows = [
        (impl.impl, res)
        for impl in impls
        for res in impl.requirements.values()
        if res.verdict in ATTENTION
    ]
    if rows:
        lines += ["| Implementation | ID | Level | Verdict | Test | Reason |"]
        lines.append("|---|---|---|---|---|---|")
        for impl_id, res in rows:
            test, reason = _test_and_reason(res)
            verdict = f"**{res.verdict}**" if res.verdict in ("fail", "error") else res.verdict
            req = res.requirement
            cells = [_cell(impl_id), req.id, req.level, verdict, f"`{_cell(test)}`", _cell(reason)]
            lines.append("| " + " | ".join(cells) + " |")
    else:
        lines.append("No requirement failed, warned, errored or was blocked.")
    lines.append("")
    for impl in impls:
        fixed = impl.fixed()
        if fixed:
            lines.append(
                f"- {_cell(impl.impl)}: {', '.join(fixed)} pass now: drop them from the baseline."
            )
    return "\n".join(lines).rstrip("\n") + "\n"
