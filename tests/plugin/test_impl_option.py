"""--fdpass-impl: every bad value stops the run with one clear line; good ones load."""

from __future__ import annotations

from pathlib import Path

import pytest

from fdpass_conformance.loading import ImplError, ImplSpec, load_impl, unique_ids

from .helpers import IMPLS, INNER_TIMEOUT, error_lines

pytestmark = pytest.mark.timeout(120)

FORM = "expected MODULE:ATTR, e.g. --fdpass-impl=reference:MasterProxy"

BAD = [
    ("nocolon", f"no ':' in the value; {FORM}"),
    (":Proxy", f"empty module name; {FORM}"),
    ("impls:", f"empty attribute name; {FORM}"),
    ("my-impls:Proxy", f"module name 'my-impls' is not a dotted Python name; {FORM}"),
    ("impls:Proxy-1", f"attribute name 'Proxy-1' is not a dotted Python name; {FORM}"),
    (
        "no_such_mod_4711:Proxy",
        "cannot import module 'no_such_mod_4711': "
        "ModuleNotFoundError: No module named 'no_such_mod_4711'",
    ),
    ("broken_import:Proxy", "cannot import module 'broken_import': ImportError: libfoo is missing"),
    ("crashing:Proxy", "importing module 'crashing' raised RuntimeError: import-time crash"),
    ("impls:Proxx", "'impls' has no attribute 'Proxx' (did you mean Proxy?)"),
    ("impls:Proxy.nope", "'impls.Proxy' has no attribute 'nope'"),
    (
        "impls:NOT_CALLABLE",
        "NOT_CALLABLE is not callable (it is of type int); "
        "it must be a class or a zero-argument factory",
    ),
    ("impls:Raising", "calling Raising() raised ValueError: factory refused"),
    (
        "impls:Partial",
        "Partial() returned a Partial that breaks the contract: "
        "missing method accept(); missing method close()",
    ),
    (
        "impls:HalfFdPassing",
        "HalfFdPassing() returned a HalfFdPassing that breaks the contract: "
        "missing method open_channels(); missing method enter_worker()",
    ),
    (
        "impls:BadMember",
        "BadMember() returned a BadMember that breaks the contract: "
        "accept is not callable (it is int)",
    ),
    (
        "impls:make_nothing",
        "make_nothing() returned a NoneType that breaks the contract: missing method "
        "is_supported(); missing method create_socket(); missing method accept(); "
        "missing method close()",
    ),
    ("impls:CloseRaises", "close() of a fresh CloseRaises() raised RuntimeError: cannot close"),
    ("exec:./server --port 0", "exec: './server' not found"),
]


@pytest.fixture
def impl_dir(pytester: pytest.Pytester) -> pytest.Pytester:
    """The throwaway modules, importable by in-process and subprocess runs."""
    pytester.makepyfile(
        impls=IMPLS,
        broken_import='raise ImportError("libfoo is missing\\nsecond line")\n',
        crashing='raise RuntimeError("import-time crash")\n',
        test_nothing="def test_nothing():\n    pass\n",
    )
    pytester.syspathinsert()
    return pytester


@pytest.mark.parametrize(("value", "problem"), BAD, ids=[value for value, _ in BAD])
def test_bad_value_is_one_usage_error_line(
    impl_dir: pytest.Pytester, value: str, problem: str
) -> None:
    result = impl_dir.runpytest_subprocess(f"--fdpass-impl={value}", timeout=INNER_TIMEOUT)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert error_lines(result.stderr.lines) == [f"ERROR: --fdpass-impl={value}: {problem}"]
    assert "Traceback" not in result.stdout.str() + result.stderr.str()


def test_every_problem_is_reported_not_just_the_first(impl_dir: pytest.Pytester) -> None:
    result = impl_dir.runpytest_subprocess(
        "--fdpass-impl=nocolon",
        "--fdpass-impl=reference:MasterProxy",
        "--fdpass-impl=impls:Raising",
        "-o",
        "fdpass_timeout=soon",
        timeout=INNER_TIMEOUT,
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert error_lines(result.stderr.lines) == [
        f"ERROR: --fdpass-impl=nocolon: no ':' in the value; {FORM}",
        "ERROR: --fdpass-impl=impls:Raising: calling Raising() raised ValueError: factory refused",
        "ERROR: fdpass_timeout = 'soon': expected a positive number of seconds",
    ]


REPORT_IMPLS = """
import pytest
from fdpass_conformance.runstate import get_impls

def test_impls(request, fdpass_impl):
    assert fdpass_impl in get_impls(request.config)
    print(f"IMPL {fdpass_impl.id} {fdpass_impl.spec} fd_passing={fdpass_impl.fd_passing}")
    assert fdpass_impl.factory is not None
"""


def test_good_values_validate_and_parametrize(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_report=REPORT_IMPLS)
    result = pytester.runpytest_subprocess(
        str(pytester.path),
        "--fdpass-impl=reference:MasterProxy",
        "--fdpass-impl=reference:ForkSharedProxy",
        "-s",
        "-v",
        timeout=INNER_TIMEOUT,
    )
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        [
            "*test_impls[[]MasterProxy[]] IMPL MasterProxy reference:MasterProxy fd_passing=True*",
            "*test_impls[[]ForkSharedProxy[]] IMPL ForkSharedProxy reference:ForkSharedProxy "
            "fd_passing=False*",
        ],
        consecutive=False,
    )


def test_same_attribute_in_two_modules_gets_qualified_ids(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(first=IMPLS, second=IMPLS, test_report=REPORT_IMPLS)
    result = pytester.runpytest_subprocess(
        str(pytester.path),
        "--fdpass-impl=first:Proxy",
        "--fdpass-impl=second:Proxy",
        "--fdpass-impl=reference:MasterProxy",
        "--collect-only",
        "-q",
        timeout=INNER_TIMEOUT,
    )
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(
        [
            "test_report.py::test_impls[[]first:Proxy[]]",
            "test_report.py::test_impls[[]second:Proxy[]]",
            "test_report.py::test_impls[[]MasterProxy[]]",
        ]
    )


def test_repeated_value_runs_once(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_report=REPORT_IMPLS)
    result = pytester.runpytest_subprocess(
        str(pytester.path),
        "--fdpass-impl=reference:MasterProxy",
        "--fdpass-impl=reference:MasterProxy",
        timeout=INNER_TIMEOUT,
    )
    result.assert_outcomes(passed=1)


def test_without_impl_the_impl_tests_skip(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_skip="""
        def test_impl(fdpass_impl):
            raise AssertionError("must not run")

        def test_proxy(fdpass_proxy):
            raise AssertionError("must not run")

        def test_other():
            pass
        """
    )
    result = pytester.runpytest_subprocess(str(pytester.path), "-rs", timeout=INNER_TIMEOUT)
    result.assert_outcomes(passed=1, skipped=2)
    result.stdout.fnmatch_lines(["SKIPPED [[]*[]] *: no --fdpass-impl given"])


def test_factory_is_called_once_and_the_probe_closed(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile(impls=IMPLS)
    log = pytester.path / "impl.log"
    monkeypatch.setenv("IMPL_LOG", str(log))
    result = pytester.runpytest_subprocess(
        str(pytester.path), "--fdpass-impl=impls:Recorded", "--collect-only", timeout=INNER_TIMEOUT
    )
    assert result.ret == pytest.ExitCode.NO_TESTS_COLLECTED
    assert log.read_text().split() == ["init", "close"]


def test_help_works_despite_a_bad_impl(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_subprocess(
        str(pytester.path), "--fdpass-impl=nocolon", "--help", timeout=60
    )
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(["*fd-passing proxy conformance*", "*--fdpass-impl=MODULE:ATTR*"])


def test_not_on_sys_path_hint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "lonely_impl_4711.py").write_text(IMPLS)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ImplError) as info:
        load_impl("lonely_impl_4711:Proxy")
    assert str(info.value) == (
        "--fdpass-impl=lonely_impl_4711:Proxy: cannot import module 'lonely_impl_4711': "
        "ModuleNotFoundError: No module named 'lonely_impl_4711' (it is in the current "
        "directory: run `python -m pytest` or set PYTHONPATH=.)"
    )


def test_load_impl_in_process() -> None:
    impl = load_impl("reference:MasterProxy")
    assert (impl.spec, impl.module, impl.attr, impl.fd_passing) == (
        "reference:MasterProxy",
        "reference",
        "MasterProxy",
        True,
    )
    assert impl.id == "MasterProxy"
    assert type(impl.factory()).__name__ == "MasterProxy"


def test_unique_ids_only_qualify_collisions() -> None:
    def spec(text: str) -> ImplSpec:
        module, _, attr = text.partition(":")
        return ImplSpec(text, module, attr, object, fd_passing=False)

    impls = unique_ids([spec("a:Proxy"), spec("b:Proxy"), spec("a:Other")])
    assert [i.id for i in impls] == ["a:Proxy", "b:Proxy", "Other"]


def test_a_project_of_its_own_reference_module_keeps_it(pytester: pytest.Pytester) -> None:
    """The alias reference -> fdpass_conformance.reference applies only where no module
    named ``reference`` exists: a project's own one wins (the installed wheel: test_wheel)."""
    pytester.makepyfile(reference=IMPLS, test_report=REPORT_IMPLS)
    result = pytester.runpytest_subprocess(
        str(pytester.path), "--fdpass-impl=reference:Proxy", "-s", timeout=INNER_TIMEOUT
    )
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*IMPL Proxy reference:Proxy fd_passing=False*"])
