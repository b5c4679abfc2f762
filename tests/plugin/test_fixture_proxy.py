"""fdpass_proxy: a fresh instance per test, closed at teardown, a failing close reported."""

from __future__ import annotations

import pytest

from .helpers import IMPLS, INNER_TIMEOUT

pytestmark = pytest.mark.timeout(120)

USES_PROXY = """
import os

def test_one(fdpass_proxy, fdpass_impl):
    assert type(fdpass_proxy).__name__ == fdpass_impl.attr
    with open(os.environ["IMPL_LOG"], "a") as f:
        f.write("test\\n")

def test_two(fdpass_proxy):
    with open(os.environ["IMPL_LOG"], "a") as f:
        f.write("test\\n")
"""


def test_fresh_proxy_per_test_closed_at_teardown(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile(impls=IMPLS, test_proxy=USES_PROXY)
    log = pytester.path / "impl.log"
    monkeypatch.setenv("IMPL_LOG", str(log))
    result = pytester.runpytest_subprocess(
        str(pytester.path), "--fdpass-impl=impls:Recorded", timeout=INNER_TIMEOUT
    )
    result.assert_outcomes(passed=2)
    # The validation probe, then one instance per test, each closed after its test.
    assert log.read_text().split() == ["init", "close"] + ["init", "test", "close"] * 2


def test_close_that_raises_is_reported(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        impls=IMPLS,
        test_proxy="""
        def test_uses(fdpass_proxy):
            pass
        """,
    )
    result = pytester.runpytest_subprocess(
        str(pytester.path), "--fdpass-impl=impls:SecondCloseFails", timeout=INNER_TIMEOUT
    )
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_uses*",
            "*impls:SecondCloseFails: close() at teardown raised OSError: "
            "[[]Errno 9[]] close exploded",
        ]
    )
