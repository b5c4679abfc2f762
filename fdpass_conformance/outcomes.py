"""The outcomes a contract test can end with beyond pass and fail, carried as data.

pytest knows pass, fail and skip. A verdict an author can trust needs three
more: ``n-a`` (the requirement does not apply to this proxy), ``blocked`` (it
cannot be checked because the proxy lacks a capability that another, failing
requirement owns: the proxy is blamed once, on the root cause) and ``error``
(the toolkit itself broke: never the proxy's outcome). ``n-a`` and ``blocked``
are skips whose kind travels in the exception and then in the test report's
``user_properties``; the plugin reads that data, never the reason text.
"""

from __future__ import annotations

import contextlib
import traceback
from pathlib import Path
from types import TracebackType
from typing import NoReturn

import pytest

from .contract import FD_PASSING_METHODS

#: Keys of ``TestReport.user_properties`` that carry an outcome (they cross xdist).
OUTCOME = "fdpass_outcome"
BLOCKED_BY = "fdpass_blocked_by"
DETAILS = "fdpass_details"
REASON = "fdpass_reason"

#: Set on an exception raised by the implementation's own code (in the server's
#: master, where the harness calls it), so that it is judged as the proxy's outcome.
ORIGIN_ATTR = "fdpass_origin"

#: Exceptions that, raised by the toolkit's own code in the test process, mean a bug of
#: ours (a wrong attribute, a bad index), not evidence about the proxy.
TOOLKIT_BUGS: tuple[type[BaseException], ...] = (
    AttributeError,
    NameError,
    TypeError,
    LookupError,
    ImportError,
    ZeroDivisionError,
    RecursionError,
)

_PACKAGE = Path(__file__).resolve().parent


class NotApplicable(pytest.skip.Exception):  # type: ignore[misc, name-defined]
    """The requirement does not apply to this implementation."""


class Blocked(pytest.skip.Exception):  # type: ignore[misc, name-defined]
    """The check needs a capability the proxy has shown it lacks; ``by`` owns it."""

    def __init__(self, by: str, why: str) -> None:
        super().__init__(f"blocked by {by}: {why}")
        self.blocked_by = by


class MissingMethod(NotImplementedError):
    """The implementation has no such method (or says so through the exec adapter).

    A check that needs the method is blocked by the requirement that asks for
    it (SP-01 for the four socket-proxy methods, FP-01 for the fd-passing three).
    """

    def __init__(self, method: str, detail: str = "") -> None:
        super().__init__(detail or f"the implementation has no {method}()")
        self.method, self.detail = method, detail
        self.owner = "FP-01" if method in FD_PASSING_METHODS else "SP-01"

    def __reduce__(self) -> tuple[object, ...]:  # it crosses the control channel pickled
        return (type(self), (self.method, self.detail), self.__dict__)


def not_applicable(why: str) -> NoReturn:
    raise NotApplicable(f"n/a: {why}")


def blocked(by: str, why: str) -> NoReturn:
    raise Blocked(by, why)


def from_implementation(exc: BaseException) -> BaseException:
    """Mark ``exc`` as raised by the implementation's code (see ORIGIN_ATTR)."""
    with contextlib.suppress(AttributeError, TypeError):  # a type without a __dict__
        setattr(exc, ORIGIN_ATTR, "implementation")
    return exc


def is_toolkit_error(exc: BaseException) -> bool:
    """A bug of the toolkit rather than evidence: a programming error not raised by the proxy."""
    if getattr(exc, ORIGIN_ATTR, None) == "implementation":
        return False
    return isinstance(exc, TOOLKIT_BUGS) and not isinstance(exc, AssertionError)


def classify(exc: BaseException | None, failed: bool) -> tuple[str, str]:
    """(outcome, blocked_by) of a test report from the exception that ended it."""
    if isinstance(exc, Blocked):
        return "blocked", exc.blocked_by
    if isinstance(exc, MissingMethod):
        return "blocked", exc.owner
    if isinstance(exc, NotApplicable):
        return "n-a", ""
    if exc is not None and failed and is_toolkit_error(exc):
        return "error", ""
    return ("fail", "") if failed else ("", "")


def timeout_reason(exc: BaseException, tb: TracebackType | None) -> str:
    """For a check cut off by pytest-timeout, what it was waiting for; '' otherwise.

    pytest-timeout's own line ("Timeout (>60.0s) from pytest-timeout") names no
    step. The innermost frames of the toolkit in the traceback do: the wait that
    never ended, and the check that started it.
    """
    text = str(exc)
    if not text.startswith("Timeout") or "pytest-timeout" not in text:
        return ""
    frames = traceback.extract_tb(tb)
    # The innermost public step of the toolkit (``request``, ``read_reply``), not the
    # private helper under it that happened to hold the blocking call.
    ours = [f for f in frames if _inside(f.filename) and not f.name.startswith("_")]
    if not ours:
        return f"{text}: no step of the toolkit was running (the test's own code)"
    where = f"{_short(ours[-1].filename)}:{ours[-1].lineno} in {ours[-1].name}"
    checks = [f for f in frames if f.name.startswith("test_")]
    origin = f", called from {checks[-1].name} line {checks[-1].lineno}" if checks else ""
    head = text.split(" from pytest-timeout")[0]
    return f"{head}: still waiting in {where}{origin} (the proxy blocks this step)"


def details(exc: BaseException, tb: TracebackType | None, limit: int = 40) -> str:
    """The whole message and the traceback lines that matter: the suites', the harness's
    and the implementation's frames, not pytest's machinery, at most ``limit`` lines."""
    frames = [
        f
        for f in traceback.extract_tb(tb)
        if not ("/_pytest/" in f.filename or "/pluggy/" in f.filename)
    ]
    lines = [f"  {_short(f.filename)}:{f.lineno} in {f.name}" for f in frames][-12:]
    message = "".join(traceback.format_exception_only(type(exc), exc)).rstrip()
    notes = getattr(exc, "__notes__", None) or []
    text = "\n".join([message, *lines, *(str(n) for n in notes)])
    out = text.splitlines()
    return "\n".join(out[:limit] + (["  ..."] if len(out) > limit else []))


def _inside(filename: str) -> bool:
    try:
        Path(filename).resolve().relative_to(_PACKAGE)
    except ValueError:
        return False
    return True


def _short(filename: str) -> str:
    path = Path(filename)
    try:
        return str(path.resolve().relative_to(_PACKAGE.parent))
    except ValueError:
        return path.name
