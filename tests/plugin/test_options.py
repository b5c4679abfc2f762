"""The reserved options parse, the ini timeout validates, the marker is registered."""

from __future__ import annotations

import pytest

from fdpass_conformance.catalogue import REQUIREMENTS

from .helpers import INNER_TIMEOUT, error_lines

pytestmark = pytest.mark.timeout(120)

SHOW_OPTIONS = """
import pytest
from fdpass_conformance.plugin import fdpass_timeout

def test_show(request):
    opt = request.config.option
    print("OPTS", opt.fdpass_strict, opt.fdpass_list, opt.fdpass_only, opt.fdpass_report,
          opt.fdpass_hypothesis_profile, fdpass_timeout(request.config))

@pytest.mark.requirement("FP-03", "IPC-01")
def test_marked():
    pass
"""


def test_defaults(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_show=SHOW_OPTIONS)
    result = pytester.runpytest_subprocess("-s", "--strict-markers", timeout=INNER_TIMEOUT)
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*OPTS False False () [[][]] default 60.0"])


def test_every_reserved_option_parses(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_show=SHOW_OPTIONS)
    result = pytester.runpytest_subprocess(
        "-s",
        "--strict-markers",
        "--fdpass-strict",
        "--fdpass-only= FP, IPC-0 ,,",
        "--fdpass-report=out/report.json",
        "--fdpass-hypothesis-profile=ci",
        "-o",
        "fdpass_timeout=2.5",
        timeout=INNER_TIMEOUT,
    )
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*OPTS True False ('FP', 'IPC-0') [[]'out/report.json'[]] ci 2.5"])


def test_fdpass_list_prints_the_catalogue_and_runs_nothing(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_never="def test_never():\n    raise AssertionError('ran')\n")
    result = pytester.runpytest_subprocess(
        "--fdpass-list", "--fdpass-only=FP-1", timeout=INNER_TIMEOUT
    )
    assert result.ret == pytest.ExitCode.OK
    ids = [line.split()[0] for line in result.stdout.lines if line.startswith("FP-")]
    assert ids == [r.id for r in REQUIREMENTS if r.id.startswith("FP-1")]
    assert ids[0] == "FP-10" and len(ids) > 1
    assert "ran" not in result.stdout.str()


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("--fdpass-only=XYZ", "ERROR: --fdpass-only=XYZ: no requirement ID starts with 'XYZ'*"),
        ("--fdpass-report=out.pdf", "ERROR: --fdpass-report=out.pdf: unknown format '.pdf'*"),
    ],
)
def test_bad_run_options_are_usage_errors(
    pytester: pytest.Pytester, option: str, message: str
) -> None:
    result = pytester.runpytest_subprocess(
        "--fdpass-impl=reference:MasterProxy", option, timeout=INNER_TIMEOUT
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])
    assert "Traceback" not in result.stderr.str()


@pytest.mark.parametrize("value", ["0", "-1", "nan", "soon"])
def test_bad_timeout_is_a_usage_error(pytester: pytest.Pytester, value: str) -> None:
    pytester.makeini(f"[pytest]\nfdpass_timeout = {value}\n")
    result = pytester.runpytest_subprocess(timeout=INNER_TIMEOUT)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert error_lines(result.stderr.lines) == [
        f"ERROR: fdpass_timeout = '{value}': expected a positive number of seconds"
    ]


def test_requirement_marker_is_listed(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_subprocess("--markers", timeout=INNER_TIMEOUT)
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(["@pytest.mark.requirement(*ids): the contract requirement IDs*"])


def test_unknown_requirement_id_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_typo="""
        import pytest

        @pytest.mark.requirement("FP-99")
        def test_typo():
            pass
        """
    )
    result = pytester.runpytest_subprocess(timeout=INNER_TIMEOUT)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: unknown requirement ID(s)*FP-99*"])


@pytest.mark.parametrize(
    ("profile", "flt05", "others"),
    [("default", 7.0, 7.0), ("thorough", 7.0 * 200 * 40 / (15 * 12), 7.0)],
)
def test_the_flt05_deadline_grows_with_the_hypothesis_profile(
    pytester: pytest.Pytester, profile: str, flt05: float, others: float
) -> None:
    """fdpass_timeout fits the default profile; a thorough run must not be cut off by it."""
    pytester.makeconftest(
        """
        def pytest_collection_finish(session):
            for item in session.items:
                ids = [a for m in item.iter_markers("requirement") for a in m.args]
                print("DEADLINE", ids[0], item.get_closest_marker("timeout").args[0])
        """
    )
    result = pytester.runpytest_subprocess(
        "--collect-only",
        "-s",
        "--fdpass-impl=reference:MasterProxy",
        "--fdpass-only=FLT-05,SP-01",
        f"--fdpass-hypothesis-profile={profile}",
        "-o",
        "fdpass_timeout=7",
        timeout=INNER_TIMEOUT,
    )
    deadlines = {
        line.split()[1]: float(line.split()[2])
        for line in result.stdout.lines
        if line.startswith("DEADLINE")
    }
    assert deadlines == pytest.approx({"FLT-05": flt05, "SP-01": others})
