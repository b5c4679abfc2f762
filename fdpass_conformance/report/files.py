"""The report as a file, its format chosen by the extension: .json, .md or .html."""

from __future__ import annotations

import html
import json
from pathlib import Path

from .model import Report, RequirementResult

FORMATS = (".json", ".md", ".html")


def check_path(path: str) -> str | None:
    """A one-line problem with a --fdpass-report value, or None."""
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        return (
            f"--fdpass-report={path}: unknown format {suffix or '(no extension)'!r}; "
            f"use a path ending in {', '.join(FORMATS)}"
        )
    return None


def _reason(res: RequirementResult) -> tuple[str, str]:
    """The test that decided the requirement's result, and its reason."""
    deciding = res.deciding
    if deciding is None or res.result == "pass":
        return "", ""
    return deciding.nodeid, deciding.reason


def to_markdown(report: Report) -> str:
    lines = [
        "# fd-passing proxy conformance report",
        "",
        f"- verdict: **{'PASS' if report.passed() else 'FAIL'}**"
        f"{' (strict: SHOULD failures count)' if report.strict else ''}",
        f"- IPC isolation: {report.isolation}",
        f"- fault layers: {', '.join(f'{k}: {v}' for k, v in report.fault_layers.items())}",
        "",
    ]
    for impl in report.impls.values():
        counts = ", ".join(f"{k} {v}" for k, v in impl.counts().items() if v)
        lines += [f"## {impl.impl}", "", counts, "", "| ID | Level | Result | Test | Reason |"]
        lines.append("|---|---|---|---|---|")
        for res in impl.requirements.values():
            test, reason = _reason(res)
            cells = [res.requirement.id, res.requirement.level, res.verdict, test, reason]
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        lines.append("")
    return "\n".join(lines)


_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin-bottom:2em}
td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left;vertical-align:top}
.pass{background:#d8f5d0}.fail{background:#f8d0d0}.warn{background:#fbecc0}
.error{background:#e0c8f0}.blocked{background:#dde4f0}
.skip,.n-a,.not-run{background:#eee;color:#666}
"""


def to_html(report: Report) -> str:
    esc = html.escape
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        "<title>fd-passing proxy conformance report</title>",
        f"<style>{_STYLE}</style></head><body>",
        "<h1>fd-passing proxy conformance report</h1>",
        f"<p>Verdict: <b>{'PASS' if report.passed() else 'FAIL'}</b>"
        f"{' (strict)' if report.strict else ''}; IPC isolation: {esc(report.isolation)}</p>",
    ]
    for impl in report.impls.values():
        parts.append(f"<h2>{esc(impl.impl)}</h2><table>")
        parts.append("<tr><th>ID</th><th>Level</th><th>Title</th><th>Result</th>")
        parts.append("<th>Test</th><th>Reason</th></tr>")
        for res in impl.requirements.values():
            test, reason = _reason(res)
            req = res.requirement
            parts.append(
                f"<tr class='{res.verdict}'><td>{req.id}</td><td>{req.level}</td>"
                f"<td>{esc(req.title)}</td><td>{res.verdict}</td>"
                f"<td>{esc(test)}</td><td>{esc(reason)}</td></tr>"
            )
        parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write(report: Report, path: str) -> None:
    suffix = Path(path).suffix.lower()
    if suffix == ".json":
        text = json.dumps(report.to_dict(), indent=2) + "\n"
    elif suffix == ".md":
        text = to_markdown(report)
    else:
        text = to_html(report)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(text, encoding="utf-8")
