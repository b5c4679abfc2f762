"""Baselines: the requirements a project already knows it fails, so the gate can hold the line.

A proxy that fails fifteen MUST requirements today can still adopt the gate:
its first run writes a baseline (``--fdpass-baseline-write``), and later runs
given that baseline (``--fdpass-baseline``) report those requirements
``known`` instead of failing, fail on any new failure, and list the known ones
that pass again so that the baseline is tightened (``--fdpass-baseline-strict``
fails until it is).

A baseline is either a JSON report of an earlier run (its failing
requirements, per implementation) or a plain list of requirement IDs, one per
line, ``#`` starting a comment, which holds for every implementation.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..catalogue import BY_ID

#: The key of a plain list: its IDs hold for every implementation.
EVERY = "*"


class BaselineError(Exception):
    """A baseline file that cannot be used, as one printable line."""


@dataclass(frozen=True)
class Baseline:
    source: str
    #: Implementation id (or EVERY) to the requirement IDs it is known to fail.
    known: dict[str, frozenset[str]] = field(default_factory=dict)

    def for_impl(self, impl: str) -> frozenset[str]:
        return self.known.get(impl, frozenset()) | self.known.get(EVERY, frozenset())


def load(path: str) -> Baseline:
    """Read a baseline; a BaselineError names the file and what is wrong with it."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise BaselineError(f"--fdpass-baseline={path}: cannot read it: {exc.strerror}") from None
    if text.lstrip().startswith("{"):
        return _from_report(path, text)
    ids = [line.split("#", 1)[0].strip() for line in text.splitlines()]
    known = frozenset(i for i in ids if i)
    _check_ids(path, known)
    return Baseline(path, {EVERY: known})


def _from_report(path: str, text: str) -> Baseline:
    try:
        data = json.loads(text)
        known = {
            str(impl["id"]): frozenset(
                str(r["id"]) for r in impl["requirements"] if r["result"] == "fail"
            )
            for impl in data["implementations"]
        }
    except (ValueError, KeyError, TypeError) as exc:
        raise BaselineError(
            f"--fdpass-baseline={path}: not a report written by --fdpass-report=*.json "
            f"({type(exc).__name__}: {exc}); give such a report or a list of IDs, one per line"
        ) from None
    for ids in known.values():
        _check_ids(path, ids)
    return Baseline(path, known)


def _check_ids(path: str, ids: frozenset[str]) -> None:
    unknown = sorted(ids - set(BY_ID))
    if unknown:
        raise BaselineError(
            f"--fdpass-baseline={path}: unknown requirement ID(s) {', '.join(unknown)} "
            "(see pytest --fdpass-list)"
        )


def to_text(failing: dict[str, list[str]]) -> str:
    """A plain baseline, one commented line per failing requirement (``Report.failing``).

    A plain list holds for every implementation: with several, it lists what
    any of them fails (write a .json report and use it for per-implementation
    baselines).
    """
    lines = [
        "# fdpass-conformance baseline: requirements known to fail (--fdpass-baseline).",
        "# Remove a line once its requirement passes; the gate fails on any other failure.",
    ]
    for rid, impls in failing.items():
        req = BY_ID[rid]
        lines.append(f"{rid:<7} # {req.level} {req.title} ({', '.join(impls)})")
    return "\n".join(lines) + "\n"
