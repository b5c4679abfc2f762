"""The conformance run: registered when ``--fdpass-impl`` is given or a suite is collected.

Like pytest-timeout, the plugin object exists only when it has work to do:
with ``--fdpass-impl`` from the start, and for a ``ContractSuite`` subclass in
a project's own tree as soon as collection finds one (``plugin.SuiteGate``),
so both ways of running the suites are the same gate. It adds the contract
suites to the collection with ``--fdpass-impl`` (no ``--pyargs`` needed, from
any directory), turns requirement levels into pytest outcomes (a SHOULD
failure is an xfail unless ``--fdpass-strict``), and gathers one result per
implementation and requirement for the terminal table and the report file.
"""

from __future__ import annotations

from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest

from . import outcomes
from .catalogue import BY_ID
from .harness.isolation import isolation_mode
from .report import files
from .report.model import Report, RequirementResult, TestOutcome, id_ranges
from .runstate import RunOptions
from .suites.base import requirement_ids

SHOULD_REASON = "SHOULD-level requirement: reported, fails the run only with --fdpass-strict"
KNOWN_REASON = "known failure, listed in the --fdpass-baseline"


def _impl_id(item: pytest.Item) -> str:
    callspec = getattr(item, "callspec", None)
    if callspec is not None and "fdpass_impl" in callspec.params:
        return str(getattr(callspec.params["fdpass_impl"], "id", callspec.params["fdpass_impl"]))
    cls = getattr(item, "cls", None)
    factory = getattr(cls, "factory", None)
    return str(getattr(factory, "__qualname__", None) or getattr(cls, "__name__", "?"))


def _one_line(exc: BaseException | None, report: pytest.TestReport) -> str:
    """The reason a report's row shows, taken from the exception that ended the test
    (a skip's own message, a failure's first line), never parsed back out of the text."""
    if isinstance(exc, pytest.skip.Exception):
        return str(exc.msg)
    crash = getattr(report.longrepr, "reprcrash", None)
    text = getattr(crash, "message", None) or str(report.longrepr or "")
    return text.strip().splitlines()[0] if text.strip() else ""


def _fault_layers() -> dict[str, str]:
    from .faults import LAYERS

    return {name: layer.status() for name, layer in LAYERS.items()}


def _scale(options: RunOptions, ids: list[str]) -> float:
    """How many times the default deadline a test may take: FLT-05 grows with its profile.

    ``fdpass_timeout`` is sized for the default Hypothesis profile; a thorough
    one runs many more and longer sequences, and must not be cut off by it.
    """
    if "FLT-05" not in ids:
        return 1.0
    from .suites.stateful import profile_scale  # hypothesis only when FLT-05 runs

    return profile_scale(options.hypothesis_profile)


class ConformancePlugin:
    def __init__(self, config: pytest.Config, options: RunOptions, *, late: bool = False) -> None:
        """``late``: registered after collection (a ContractSuite subclass run without
        --fdpass-impl): the collection is the user's, and the header is printed
        with the summary instead, since pytest printed its own header already."""
        self.config = config
        self.late = late
        self.options = options
        self.strict = options.strict
        self.report = Report(self.strict, isolation_mode(), _fault_layers())
        self.report.baseline = options.baseline
        self.report.baseline_strict = options.baseline_strict
        if not late and config.args_source != pytest.Config.ArgsSource.ARGS:
            # No paths on the command line: the suites alone, not testpaths or the
            # current directory. With paths, the user runs their own tests (the
            # fixtures are parametrized by --fdpass-impl) and names the suites
            # too if wanted: --pyargs fdpass_conformance.suites.collected.
            config.args[:] = [str(Path(__file__).parent / "suites" / "collected.py")]

    def pytest_report_header(self, config: pytest.Config) -> list[str]:
        impls = "; ".join(
            f"{i.id}: {i.language}" + (f", adapter protocol {i.protocol}" if i.protocol else "")
            for i in self.options.impls
        )
        return [f"fdpass: implementations: {impls}", *self._run_lines()]

    def _run_lines(self) -> list[str]:
        layers = "; ".join(f"{k}: {v}" for k, v in self.report.fault_layers.items())
        return [
            f"fdpass: IPC isolation: {self.report.isolation}",
            f"fdpass: fault layers: {layers}",
            "fdpass: levels: "
            + ("strict (SHOULD failures fail)" if self.strict else "MUST fails, SHOULD warns"),
        ]

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(
        self, session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
    ) -> None:
        keep: list[pytest.Item] = []
        dropped: list[pytest.Item] = []
        timeouts = config.pluginmanager.hasplugin("timeout")
        for item in items:
            ids = requirement_ids(item)
            if not ids:
                keep.append(item)
                continue
            if not any(self.options.selects(i) for i in ids):
                dropped.append(item)
                continue
            item.user_properties += [("requirement", i) for i in ids]
            item.user_properties.append(("fdpass_impl", _impl_id(item)))
            if timeouts and item.get_closest_marker("timeout") is None:  # the test's own wins
                deadline = self.options.timeout * _scale(self.options, ids)
                item.add_marker(pytest.mark.timeout(deadline))
            keep.append(item)
        if dropped:
            config.hook.pytest_deselected(items=dropped)
            items[:] = keep

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        """Carry the outcome as data, and make a failed SHOULD test an xfail (a warning)
        unless --fdpass-strict. A toolkit error or a blocked check is never a SHOULD warning."""
        report = yield
        ids = requirement_ids(item)
        if not ids or report.passed:
            return report
        exc = call.excinfo.value if call.excinfo is not None else None
        outcome, blocked_by = outcomes.classify(exc, report.failed)
        reason = _one_line(exc, report)
        if outcome == "blocked" and report.failed:  # MissingMethod escaped a check
            reason = str(exc)
            report.outcome = "skipped"
            report.longrepr = (str(item.path), item.location[1] or 0, f"Skipped: {exc}")
        if outcome:
            report.user_properties.append((outcomes.OUTCOME, outcome))
        if blocked_by:
            report.user_properties.append((outcomes.BLOCKED_BY, blocked_by))
        if exc is not None and outcome in ("fail", "error") and call.excinfo is not None:
            text = outcomes.details(exc, call.excinfo.tb)
            report.user_properties.append((outcomes.DETAILS, text))
            reason = outcomes.timeout_reason(exc, call.excinfo.tb) or reason
        report.user_properties.append((outcomes.REASON, reason))
        if (
            not self.strict
            and outcome == "fail"
            and report.when == "call"
            and all(BY_ID[i].level == "SHOULD" for i in ids if i in BY_ID)
        ):
            report.outcome = "skipped"
            report.wasxfail = f"{SHOULD_REASON}: {reason}"
        return report

    @pytest.hookimpl(wrapper=True, tryfirst=True, specname="pytest_runtest_makereport")
    def pytest_runtest_makereport_known(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        """A failure of a requirement the baseline lists is an xfail: known, not the gate's.

        Outside pytest_runtest_makereport (whose outcome it reads, so it wraps it):
        only a proxy's failure ("fail", never a toolkit "error") of a test whose
        every requirement is in the baseline for this implementation.
        """
        report = yield
        known = self.report.baseline
        if known is None or report.when != "call" or not report.failed:
            return report
        props = dict(report.user_properties)
        ids = requirement_ids(item)
        if (
            ids
            and props.get(outcomes.OUTCOME) == "fail"
            and set(ids) <= known.for_impl(str(props.get("fdpass_impl", "")))
        ):
            report.outcome = "skipped"
            report.wasxfail = f"{KNOWN_REASON}: {props.get(outcomes.REASON, '')}"
        return report

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        props = dict(report.user_properties)
        ids = [str(v) for k, v in report.user_properties if k == "requirement"]
        if not ids:
            return
        impl = str(props.get("fdpass_impl", "?"))
        layer = str(props.get("fdpass_fault_layer", ""))
        outcome: str | None = props.get(outcomes.OUTCOME)  # type: ignore[assignment]
        if outcome is None:
            if report.failed:
                outcome = "fail"
            elif report.skipped:
                outcome = "skip"
            elif report.when == "call":
                outcome = "pass"
        if outcome is not None:
            self.report.record(
                impl,
                ids,
                TestOutcome(
                    report.nodeid,
                    outcome,
                    str(props.get(outcomes.REASON, "")),
                    layer,
                    str(props.get(outcomes.BLOCKED_BY, "")),
                    str(props.get(outcomes.DETAILS, "")),
                ),
            )

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        tr = terminalreporter
        if self.late and self.report.impls:
            tr.write_sep("=", "fdpass conformance")
            for line in self._run_lines():
                tr.write_line(line)
        for impl in self.report.impls.values():
            tr.write_sep("=", f"fdpass conformance: {impl.impl}")
            not_run = [
                r.requirement.id for r in impl.requirements.values() if r.verdict == "not-run"
            ]
            for res in impl.requirements.values():
                if res.verdict != "not-run":
                    tr.write_line(_row(res), **_markup(res.verdict))
            if not_run:  # one line, not 50 rows, for an --fdpass-only run
                tr.write_line(f"{len(not_run)} not-run: {id_ranges(not_run)}")
            counts = ", ".join(f"{v} {k}" for k, v in impl.counts().items() if v)
            tr.write_line(f"{impl.impl}: {counts}")
            for orphan in impl.orphan_blocks():
                tr.write_line(
                    f"{orphan}, which did not fail in this run: the cause is not in this "
                    "report, so the gate fails (run the blocker too)",
                    red=True,
                )
        for impl in self.report.impls.values():
            for rid in impl.fixed():
                tr.write_line(
                    f"fdpass baseline: {impl.impl} {rid} is fixed: drop it from the baseline "
                    f"{self.report.baseline.source if self.report.baseline else ''}",
                    **({"red": True} if self.report.baseline_strict else {"yellow": True}),
                )
        for path in self.options.report_paths if self.report.impls else []:
            files.write(self.report, path)
            tr.write_line(f"fdpass report written to {path}")
        write_to = self.options.baseline_write
        if write_to and self.report.impls:
            files.write_baseline(self.report, write_to)
            tr.write_line(f"fdpass baseline written to {write_to}")

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        """The run fails when the report does though every test passed or warned: a
        blocked check whose blocker did not fail here (its cause is not in the report),
        a baseline listing a fixed requirement under --fdpass-baseline-strict."""
        if hasattr(session.config, "workerinput"):
            return  # an xdist worker sees part of the run; the controller decides
        if session.exitstatus == pytest.ExitCode.OK and not self.report.passed():
            session.exitstatus = pytest.ExitCode.TESTS_FAILED


def _row(res: RequirementResult) -> str:
    req = res.requirement
    line = f"{req.id:<7} {req.level:<6} {res.verdict:<7}"
    deciding = res.deciding
    if deciding is not None and res.result in ("fail", "error"):
        line += f" {deciding.nodeid.rsplit('::', 1)[-1]}: {deciding.reason}"
    elif deciding is not None and res.result != "pass":
        line += f" {deciding.reason}"
    return line


def _markup(verdict: str) -> dict[str, bool]:
    return {
        "pass": {"green": True},
        "fail": {"red": True, "bold": True},
        "warn": {"yellow": True},
        "error": {"purple": True, "bold": True},
        "blocked": {"cyan": True},
        "known": {"yellow": True},
    }.get(verdict, {})
