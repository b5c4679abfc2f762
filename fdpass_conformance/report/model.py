"""From test outcomes to one result per (implementation, requirement).

A requirement fails if any of its tests failed; it is "error" if the toolkit
itself broke while checking it (a bug of ours, never the proxy's outcome);
"blocked" if a check could not be made because the proxy lacks a capability
another requirement owns (``blocked_by`` names it: a proxy that serves nothing
fails FP-02 once, and what needs a served connection is blocked by FP-02,
not failed again); it passes if at least one test passed and none of the
above; is n-a if its tests were all skipped as not applicable, and "skip" if
they were skipped for another reason (is_supported() False, a fault layer
unavailable). "not-run" means no test of it ran (--fdpass-only).

The verdict says what a result means for the gate: a SHOULD failure is
"warn", and a failure the project's baseline already lists is "known"
(report/baseline.py): both are verdicts, computed from the result, never
results of their own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..catalogue import REQUIREMENTS, Requirement
from .baseline import Baseline

#: Results in order of precedence: a requirement takes the first one any of its tests has.
RESULTS = ("fail", "error", "blocked", "pass", "skip", "n-a", "not-run")
#: The report format's version, bumped when a field changes meaning.
#: 2: results "blocked" and "error"; tests carry ``blocked_by`` and ``details``.
#: 3: verdict "known" and the ``baseline`` of the run; implementations list ``fixed``.
REPORT_VERSION = 3
#: Every verdict: the results, and what the gate makes of a failure.
VERDICTS = (*RESULTS, "warn", "known")
#: Verdicts a reader must look at: each has evidence worth opening.
ATTENTION = ("fail", "error", "warn", "known", "blocked")


@dataclass
class TestOutcome:
    nodeid: str
    outcome: str  # one of RESULTS but "not-run"
    reason: str = ""
    fault_layer: str = ""
    #: The requirement whose failure made this check impossible ("blocked" only).
    blocked_by: str = ""
    #: The evidence beyond the one-line reason: the full message and the relevant
    #: lines of the traceback (a failure or an error), empty otherwise.
    details: str = ""


@dataclass
class RequirementResult:
    requirement: Requirement
    tests: list[TestOutcome] = field(default_factory=list)
    #: The baseline lists this requirement as failing already.
    known: bool = False

    @property
    def result(self) -> str:
        outcomes = {t.outcome for t in self.tests}
        return next((r for r in RESULTS if r in outcomes), "not-run")

    @property
    def deciding(self) -> TestOutcome | None:
        """The test whose outcome is the requirement's result: its reason is the row's."""
        result = self.result
        return next((t for t in self.tests if t.outcome == result), None)

    @property
    def verdict(self) -> str:
        """What the result means for the run: a SHOULD failure is a warning, and a
        failure the baseline lists is known."""
        if self.result != "fail":
            return self.result
        if self.known:
            return "known"
        return "fail" if self.requirement.must else "warn"


@dataclass
class ImplResults:
    impl: str
    requirements: dict[str, RequirementResult]

    @classmethod
    def empty(cls, impl: str, known: frozenset[str] = frozenset()) -> ImplResults:
        return cls(impl, {r.id: RequirementResult(r, known=r.id in known) for r in REQUIREMENTS})

    def orphan_blocks(self) -> list[str]:
        """Blocked requirements whose blocker did not fail in this run (it passed, or was
        not run): their cause is not in the report, so the gate must not pass on them."""
        out = []
        for res in self.requirements.values():
            if res.result != "blocked":
                continue
            for test in res.tests:
                blocker = self.requirements.get(test.blocked_by)
                if test.outcome == "blocked" and (blocker is None or blocker.result != "fail"):
                    out.append(f"{res.requirement.id} blocked by {test.blocked_by}")
                    break
        return out

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(VERDICTS, 0)
        for res in self.requirements.values():
            out[res.verdict] += 1
        return out

    def fixed(self) -> list[str]:
        """Requirements the baseline lists that pass now: drop them from the baseline."""
        return [
            r.requirement.id for r in self.requirements.values() if r.known and r.result == "pass"
        ]


@dataclass
class Report:
    strict: bool
    isolation: str
    fault_layers: dict[str, str]
    impls: dict[str, ImplResults] = field(default_factory=dict)
    baseline: Baseline | None = None
    #: --fdpass-baseline-strict: a baseline listing a passing requirement fails the gate.
    baseline_strict: bool = False

    def record(self, impl: str, req_ids: list[str], outcome: TestOutcome) -> None:
        if impl not in self.impls:
            known = self.baseline.for_impl(impl) if self.baseline else frozenset()
            self.impls[impl] = ImplResults.empty(impl, known)
        results = self.impls[impl]
        for rid in req_ids:
            if rid in results.requirements:
                results.requirements[rid].tests.append(outcome)

    def passed(self) -> bool:
        return all(self.impl_passed(impl) for impl in self.impls.values())

    def impl_passed(self, impl: ImplResults) -> bool:
        """The gate for one implementation: no fail or error (nor warn when strict,
        nor a fixed requirement with a strict baseline), and no blocked requirement
        whose blocker did not fail here (its cause is not in the report)."""
        bad = {"fail", "error", "warn"} if self.strict else {"fail", "error"}
        if self.baseline_strict and impl.fixed():
            return False
        if impl.orphan_blocks():
            return False
        return not any(r.verdict in bad for r in impl.requirements.values())

    def failing(self) -> dict[str, list[str]]:
        """Requirement ID -> the implementations that fail it (the plain baseline lists it)."""
        failing: dict[str, list[str]] = {}
        for impl in self.impls.values():
            for res in impl.requirements.values():
                if res.result == "fail":
                    failing.setdefault(res.requirement.id, []).append(impl.impl)
        return failing

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": REPORT_VERSION,
            "tool": "fdpass-conformance",
            "strict": self.strict,
            "isolation": self.isolation,
            "fault_layers": self.fault_layers,
            "passed": self.passed(),
            "baseline": (
                {"source": self.baseline.source, "strict": self.baseline_strict}
                if self.baseline
                else None
            ),
            "implementations": [
                {
                    "id": impl.impl,
                    "counts": impl.counts(),
                    "fixed": impl.fixed(),
                    "requirements": [
                        {
                            "id": res.requirement.id,
                            "level": res.requirement.level,
                            "title": res.requirement.title,
                            "added": res.requirement.added,
                            "result": res.result,
                            "verdict": res.verdict,
                            "tests": [t.__dict__ for t in res.tests],
                        }
                        for res in impl.requirements.values()
                    ],
                }
                for impl in self.impls.values()
            ],
        }


def id_ranges(ids: list[str]) -> str:
    """Requirement IDs as catalogue ranges: ``SP-10..SP-20, FP-01..FP-16``.

    Runs of IDs adjacent in the catalogue collapse into one range, so a long
    list (the not-run requirements of an --fdpass-only run) stays one line.
    """
    order = {r.id: n for n, r in enumerate(REQUIREMENTS)}
    wanted = sorted((i for i in ids if i in order), key=order.__getitem__)
    runs: list[list[str]] = []
    for rid in wanted:
        last = runs[-1][-1] if runs else None
        same_class = last is not None and last.split("-")[0] == rid.split("-")[0]
        if same_class and last is not None and order[rid] == order[last] + 1:
            runs[-1].append(rid)
        else:
            runs.append([rid])
    return ", ".join(r[0] if len(r) == 1 else f"{r[0]}..{r[-1]}" for r in runs)
