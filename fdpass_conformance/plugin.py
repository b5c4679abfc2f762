"""pytest entry point of the toolkit: options, validation of ``--fdpass-impl``, markers.

Hooks only: loading lives in ``loading``, fixtures in ``fixtures``. Every
``--fdpass-impl`` is validated at configure time so that a bad value stops the
run with one line per problem (exit code 4) before anything is collected.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import pytest

from fdpass_conformance.loading import ImplError, ImplSpec, load_impl, unique_ids
from fdpass_conformance.report.baseline import Baseline
from fdpass_conformance.runstate import DEFAULT_TIMEOUT, RUN_KEY, RunOptions, get_impls

if TYPE_CHECKING:
    from fdpass_conformance.conformance import ConformancePlugin

pytest_plugins = [
    "fdpass_conformance.fixtures.core",
    "fdpass_conformance.fixtures.leaks",
    "fdpass_conformance.fixtures.server",
]

REQUIREMENT_MARKER = (
    "requirement(*ids): the contract requirement IDs a test checks, e.g. "
    '@pytest.mark.requirement("FP-03")'
)


NEEDS_MARKER = (
    "fdpass_needs(*prerequisites): what a contract check needs the proxy to be able to do "
    '(e.g. "served"); a proxy that has shown it cannot gets the check reported blocked'
)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("fdpass", "fd-passing proxy conformance")
    group.addoption(
        "--fdpass-impl",
        action="append",
        default=[],
        metavar="MODULE:ATTR",
        help="implementation to check: a zero-argument factory returning a new proxy, "
        "e.g. reference:MasterProxy (repeatable)",
    )
    group.addoption(
        "--fdpass-strict",
        action="store_true",
        default=False,
        help="fail the run on SHOULD requirements too",
    )
    group.addoption(
        "--fdpass-list",
        action="store_true",
        default=False,
        help="list the contract requirements and exit",
    )
    group.addoption(
        "--fdpass-only",
        type=_comma_list,
        default=(),
        metavar="PREFIXES",
        help="run only requirements whose ID starts with one of these "
        "comma-separated prefixes, e.g. FP,IPC-0",
    )
    group.addoption(
        "--fdpass-report",
        action="append",
        default=[],
        metavar="PATH",
        help="write the conformance report to PATH; the extension chooses the format: "
        ".json, .md (a job summary) or .html (repeatable)",
    )
    group.addoption(
        "--fdpass-baseline",
        default=None,
        metavar="PATH",
        help="requirements known to fail (a JSON report of an earlier run, or a list of IDs "
        "one per line): reported 'known', they do not fail the run; a new failure does",
    )
    group.addoption(
        "--fdpass-baseline-strict",
        action="store_true",
        default=False,
        help="also fail the run while the baseline lists a requirement that passes now",
    )
    group.addoption(
        "--fdpass-baseline-write",
        default=None,
        metavar="PATH",
        help="write this run's failing requirements as a baseline to PATH "
        "(.json: the whole report, per implementation; otherwise a list of IDs)",
    )
    group.addoption(
        "--fdpass-hypothesis-profile",
        default="default",
        metavar="NAME",
        help="hypothesis settings profile of the property tests (default: %(default)s)",
    )
    parser.addini(
        "fdpass_timeout",
        f"default per-test timeout of contract tests, in seconds (default {DEFAULT_TIMEOUT:g})",
        default=str(DEFAULT_TIMEOUT),
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", REQUIREMENT_MARKER)
    config.addinivalue_line("markers", NEEDS_MARKER)
    if config.option.help:
        return  # --help must work even when an --fdpass-impl value is broken
    options = _validated(config)
    config.stash[RUN_KEY] = options
    if options.impls:
        from fdpass_conformance.conformance import ConformancePlugin

        config.pluginmanager.register(ConformancePlugin(config, options), CONFORMANCE)
    else:
        config.pluginmanager.register(SuiteGate(config, options), "fdpass-suite-gate")


def _validated(config: pytest.Config) -> RunOptions:
    """The one run-options object, or a UsageError listing every problem, one per line."""
    impls: list[ImplSpec] = []
    problems: list[str] = []
    for spec in dict.fromkeys(config.getoption("fdpass_impl")):  # once per distinct value
        try:
            impls.append(load_impl(spec))
        except ImplError as exc:
            problems.append(str(exc))
    timeout = DEFAULT_TIMEOUT
    try:
        timeout = fdpass_timeout(config)
    except ValueError as exc:
        problems.append(str(exc))
    baseline, more = _check_run_options(config)
    problems += more
    if problems:
        raise pytest.UsageError(*problems)
    return RunOptions(
        impls=tuple(unique_ids(impls)),
        timeout=timeout,
        strict=bool(config.getoption("fdpass_strict")),
        only=tuple(p.upper() for p in config.getoption("fdpass_only")),
        report_paths=tuple(config.getoption("fdpass_report")),
        baseline=baseline,
        baseline_strict=bool(config.getoption("fdpass_baseline_strict")),
        baseline_write=config.getoption("fdpass_baseline_write"),
        hypothesis_profile=str(config.getoption("fdpass_hypothesis_profile")),
    )


#: The name the conformance plugin object is registered under.
CONFORMANCE = "fdpass-conformance"


class SuiteGate:
    """A ``ContractSuite`` subclass run without ``--fdpass-impl`` is the same gate.

    SHOULD failures warn unless --fdpass-strict, --fdpass-only selects, the
    table, the report file and the junit properties are there: the conformance
    plugin is registered as soon as collection finds a suite class. Under
    pytest-xdist the controller collects nothing; it registers the plugin on
    the first report that a worker's conformance plugin marked.
    """

    def __init__(self, config: pytest.Config, options: RunOptions) -> None:
        self.config = config
        self.options = options
        self.plugin: ConformancePlugin | None = None

    def _start(self) -> ConformancePlugin:
        from fdpass_conformance.conformance import ConformancePlugin

        if self.plugin is None:
            self.plugin = ConformancePlugin(self.config, self.options, late=True)
            self.config.pluginmanager.register(self.plugin, CONFORMANCE)
        return self.plugin

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(
        self, session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
    ) -> None:
        if self.plugin is None and any(_is_suite_item(item) for item in items):
            # Registered during this hook, the plugin misses this call of it.
            self._start().pytest_collection_modifyitems(session, config, items)

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if self.plugin is None and any(k == "fdpass_impl" for k, _ in report.user_properties):
            self._start().pytest_runtest_logreport(report)


def _is_suite_item(item: pytest.Item) -> bool:
    # A suite class can only be collected once its module was imported.
    base = sys.modules.get("fdpass_conformance.suites.base")
    cls = getattr(item, "cls", None)
    return base is not None and isinstance(cls, type) and issubclass(cls, base.SuiteBase)


def _check_run_options(config: pytest.Config) -> tuple[Baseline | None, list[str]]:
    from fdpass_conformance.catalogue import select
    from fdpass_conformance.report.files import check_path

    problems = []
    loaded: Baseline | None = None
    only = config.getoption("fdpass_only")
    if only:
        try:
            select(list(only))
        except ValueError as exc:
            problems.append(f"--fdpass-only={','.join(only)}: {exc}")
    for report in config.getoption("fdpass_report"):
        problem = check_path(report)
        if problem:
            problems.append(problem)
    path = config.getoption("fdpass_baseline")
    if path:
        from fdpass_conformance.report import baseline

        try:
            loaded = baseline.load(path)
        except baseline.BaselineError as exc:
            problems.append(str(exc))
    elif config.getoption("fdpass_baseline_strict"):
        problems.append("--fdpass-baseline-strict: no --fdpass-baseline=PATH to hold to")
    return loaded, problems


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A requirement ID that the catalogue doesn't know is a typo: stop the run."""
    from fdpass_conformance.catalogue import BY_ID

    unknown = sorted(
        {str(i) for item in items for m in item.iter_markers("requirement") for i in m.args}
        - set(BY_ID)
    )
    if unknown:
        raise pytest.UsageError(
            f"unknown requirement ID(s) in @pytest.mark.requirement: {', '.join(unknown)} "
            "(see pytest --fdpass-list)"
        )


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config: pytest.Config) -> int | None:
    """``--fdpass-list``: print the catalogue (h2spec's --dryrun) and run nothing."""
    if not config.getoption("fdpass_list"):
        return None
    from fdpass_conformance.catalogue import select

    try:
        reqs = select(list(config.getoption("fdpass_only")))
    except ValueError as exc:
        raise pytest.UsageError(f"--fdpass-only: {exc}") from None
    for req in reqs:
        added = " (added)" if req.added else ""
        print(f"{req.id:<7} {req.level:<6} {req.title}{added}")
    return 0


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run every test that uses ``fdpass_impl`` once per implementation.

    Without any ``--fdpass-impl`` nothing is parametrized and the fixture
    skips; a test that parametrizes ``fdpass_impl`` itself is left alone.
    """
    if "fdpass_impl" not in metafunc.fixturenames or _parametrizes_itself(metafunc):
        return
    impls = get_impls(metafunc.config)
    if impls:
        metafunc.parametrize("fdpass_impl", impls, ids=[i.id for i in impls], indirect=True)


def fdpass_timeout(config: pytest.Config) -> float:
    """The ini ``fdpass_timeout`` as seconds; a ValueError names the bad value."""
    raw = config.getini("fdpass_timeout")
    try:
        value = float(raw)
    except (TypeError, ValueError):
        value = -1.0
    if not value > 0:
        raise ValueError(f"fdpass_timeout = {raw!r}: expected a positive number of seconds")
    return value


def _comma_list(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


def _parametrizes_itself(metafunc: pytest.Metafunc) -> bool:
    for marker in metafunc.definition.iter_markers("parametrize"):
        names = marker.args[0] if marker.args else marker.kwargs.get("argnames", "")
        if isinstance(names, str):
            names = [n.strip() for n in names.split(",")]
        if "fdpass_impl" in names:
            return True
    return False
