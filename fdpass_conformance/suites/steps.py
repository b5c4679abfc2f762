"""Steps more than one suite drives a server through, each giving back what the proxy did.

A step returns the exception the implementation raised instead of raising it,
so that the check judges it and can say what came instead of what it
awaited. A hang or a dead master is not the proxy's answer to a call: the
harness's error (``HarnessError``) always propagates.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable

from ..harness.server import HarnessError, ProxyServer
from ..outcomes import not_applicable
from .evidence import FdSnapshot, master_pid


def outcome_of(call: Callable[[], object]) -> object:
    """What a call gave: its return value, or the exception the implementation raised,
    so that a check can say what came instead of what it awaited (pytest.raises only
    says "DID NOT RAISE"). A hang or a dead master is no answer: HarnessError propagates."""
    try:
        return call()
    except HarnessError:
        raise
    except Exception as exc:
        return exc


def raised_by(call: Callable[[], object]) -> Exception | None:
    """The exception the implementation raised in ``call``, None if it returned."""
    outcome = outcome_of(call)
    return outcome if isinstance(outcome, Exception) else None


def fd_passing_only(srv: ProxyServer) -> None:
    """For a check of one requirement's cases that need ``dispatch`` (a whole requirement
    that does is n/a through ``catalogue.FD_PASSING_ONLY``, before the check starts)."""
    if not srv.fd_passing:
        not_applicable("not an fd-passing proxy (no dispatch)")


def sigpipe_default() -> None:
    """master_setup: like a C or PHP master, SIGPIPE kills unless every send uses MSG_NOSIGNAL."""
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)


def setup_until_failure(
    srv: ProxyServer, inst: int, workers: int, port: int = 0
) -> tuple[str, Exception | None, FdSnapshot]:
    """``create_socket``, then ``open_channels`` for an fd-passing proxy, up to the first error.

    Returns (the step that raised, or "" if none did; its exception; the
    master's fds after the last step that succeeded, which is what the master
    may still hold after the failure).
    """
    pid = master_pid(srv)
    kept = FdSnapshot.of(pid)
    exc = raised_by(lambda: srv.create_socket(port=port, inst=inst))
    if exc is not None:
        return "create_socket", exc, kept
    kept = FdSnapshot.of(pid)
    if srv.instances[inst].fd_passing:
        exc = raised_by(lambda: srv.call("open_channels", workers, inst=inst))
        if exc is not None:
            return "open_channels", exc, kept
    return "", None, kept


def close_quietly(srv: ProxyServer, inst: int = 0) -> Exception | None:
    """The master's ``close()``; its exception (judged elsewhere) is returned, not raised."""
    return raised_by(lambda: srv.call("close", inst=inst, timeout=5.0))


def timed_dispatch(
    srv: ProxyServer, timeout: float, slack: float, inst: int = 0
) -> tuple[int | Exception, float]:
    """One manual ``dispatch(timeout)``: (index or the exception, seconds it took).

    A dispatch still running ``timeout + slack`` seconds later fails the test.
    """
    start = time.monotonic()
    try:
        outcome: int | Exception = int(
            srv.request("dispatch", timeout, inst=inst, timeout=timeout + slack)
        )
    except HarnessError as exc:
        raise AssertionError(f"dispatch(timeout={timeout}) did not return: {exc}") from None
    except Exception as exc:
        outcome = exc
    return outcome, time.monotonic() - start
