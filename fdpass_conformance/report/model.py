"""From test outcomes to one result per (implementation, requirement).

A requirement fails if any of its tests failed, passes if at least one passed
and none failed, is n-a if its tests were all skipped as not applicable, and
is "skip" if they were skipped for another reason (is_supported() False, a
fault layer unavailable). "not-run" means no test of it ran (--fdpass-only).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..catalogue import REQUIREMENTS, Requirement

RESULTS = ("pass", "fail", "skip", "n-a", "not-run")
#: The report format's version, bumped when a field changes meaning.
REPORT_VERSION = 1


@dataclass
class TestOutcome:
    nodeid: str
    outcome: str  # "pass" | "fail" | "skip" | "n-a"
    reason: str = ""
    fault_layer: str = ""


@dataclass
class RequirementResult:
    requirement: Requirement
    tests: list[TestOutcome] = field(default_factory=list)

    @property
    def result(self) -> str:
        outcomes = {t.outcome for t in self.tests}
        for candidate in ("fail", "pass", "skip", "n-a"):
            if candidate in outcomes:
                return candidate
        return "not-run"

    @property
    def first_failure(self) -> TestOutcome | None:
        return next((t for t in self.tests if t.outcome == "fail"), None)

    @property
    def verdict(self) -> str:
        """What the result means for the run: a SHOULD failure is a warning."""
        if self.result != "fail":
            return self.result
        return "fail" if self.requirement.must else "warn"


@dataclass
class ImplResults:
    impl: str
    requirements: dict[str, RequirementResult]

    @classmethod
    def empty(cls, impl: str) -> ImplResults:
        return cls(impl, {r.id: RequirementResult(r) for r in REQUIREMENTS})

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(("pass", "fail", "warn", "skip", "n-a", "not-run"), 0)
        for res in self.requirements.values():
            out[res.verdict] += 1
        return out


@dataclass
class Report:
    strict: bool
    isolation: str
    fault_layers: dict[str, str]
    impls: dict[str, ImplResults] = field(default_factory=dict)

    def record(self, impl: str, req_ids: list[str], outcome: TestOutcome) -> None:
        results = self.impls.setdefault(impl, ImplResults.empty(impl))
        for rid in req_ids:
            if rid in results.requirements:
                results.requirements[rid].tests.append(outcome)

    def passed(self) -> bool:
        bad = {"fail", "warn"} if self.strict else {"fail"}
        return not any(
            r.verdict in bad for i in self.impls.values() for r in i.requirements.values()
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": REPORT_VERSION,
            "tool": "fdpass-conformance",
            "strict": self.strict,
            "isolation": self.isolation,
            "fault_layers": self.fault_layers,
            "passed": self.passed(),
            "implementations": [
                {
                    "id": impl.impl,
                    "counts": impl.counts(),
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
