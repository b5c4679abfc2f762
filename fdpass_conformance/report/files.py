"""The report as a file, its format chosen by the extension: .json, .md or .html."""

from __future__ import annotations

import json
from pathlib import Path

from .baseline import to_text
from .html import to_html
from .markdown import to_markdown
from .model import Report

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


def render(report: Report, suffix: str) -> str:
    if suffix == ".json":
        return json.dumps(report.to_dict(), indent=2) + "\n"
    if suffix == ".md":
        return to_markdown(report)
    return to_html(report)


def write(report: Report, path: str) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(render(report, Path(path).suffix.lower()), encoding="utf-8")


def write_baseline(report: Report, path: str) -> None:
    """``.json``: the whole report (a per-implementation baseline); otherwise a plain list."""
    if Path(path).suffix.lower() == ".json":
        write(report, path)
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(to_text(report.failing()), encoding="utf-8")
