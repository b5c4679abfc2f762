"""Calls into a proxy made by a child forked from the master, reported step by step.

Some calls only mean something in a forked process: ``enter_worker(i)`` with
an index that names no channel (FP-16), ``accept`` after a worker closed its
end, ``enter_worker`` after the master closed (FP-15). The child makes the
calls in order, stops at the first exception, and reports each outcome and
the fd count of the process that implements them (the child itself, or the
program worker it drives through the exec adapter) before and after the last
call, so the suite can tell "refused and closed nothing" from "closed its
inheritance on the way out".
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Sequence
from typing import Any

from ..leaks.fds import fd_count
from ..processes import call_in_child

#: Stands for the instance's listener in a call's arguments (``cases.LISTENER_ARG``).
LISTENER_ARG = "<listener>"


def _outcome(exc: BaseException | None) -> dict[str, Any]:
    if exc is None:
        return {"raised": None}
    return {
        "raised": type(exc).__name__,
        "message": str(exc),
        "errno": getattr(exc, "errno", None),
        "mro": [c.__name__ for c in type(exc).__mro__],
    }


def fork_calls(
    proxy: Any,
    listener: socket.socket | None,
    calls: Sequence[tuple[str, Sequence[object]]],
    *,
    impl_pid: Callable[[], int],
    in_child: Callable[[], None],
    timeout: float,
) -> dict[str, Any]:
    """Make ``calls`` in a forked child; {"steps": [...], "fds": [before, after], "hung": str}.

    ``in_child`` runs first in the child (closing what the master's control
    channel needs closed); ``impl_pid`` is called in the child to learn whose
    fds to count. A child still running after ``timeout`` seconds is killed:
    ``hung`` then names the call it was in, as far as the steps tell.
    """

    def body() -> bytes:
        in_child()
        steps: list[dict[str, Any]] = []
        fds: list[int] = []
        for n, (method, args) in enumerate(calls):
            real = [listener if a == LISTENER_ARG else a for a in args]
            last = n == len(calls) - 1
            if last:
                fds.append(fd_count(impl_pid()))
            exc: BaseException | None = None
            try:
                getattr(proxy, method)(*real)
            except BaseException as raised:  # the proxy's outcome, reported as data
                exc = raised
            steps.append({"method": method, **_outcome(exc)})
            if last:
                fds.append(fd_count(impl_pid()))
            if exc is not None:
                break
        return json.dumps({"steps": steps, "fds": fds, "hung": ""}).encode()

    try:
        result = call_in_child(body, timeout)
    except TimeoutError as exc:
        return {"steps": [], "fds": [], "hung": str(exc)}
    if result.status != 0:
        text = result.output.decode(errors="replace")
        return {"steps": [], "fds": [], "hung": "", "crashed": f"status {result.status}: {text}"}
    data: dict[str, Any] = json.loads(result.output)
    return data
