"""FLT-05's invariants: their names and meaning, and the judgements that need no server.

The machine checks each after every step (``machine.py``); a broken one raises
``InvariantViolation``, whose first line names it, so that a report reads the
name and not a message.
"""

from __future__ import annotations

import os

from ...faults.errors import errno_name
from ...harness.server import ShutdownReport
from ...processes import describe_status
from .clients import Client

INV_MASTER = "master-alive"
INV_WORKERS = "workers-alive"
INV_CLIENT = "clients-served-or-closed"
INV_LOST = "no-lost-connections"
INV_MATCH = "answers-match-clients"
INV_HELD = "held-connections-open"
INV_DISPATCH = "dispatch-outcome"
INV_MASTER_FDS = "master-fds-flat"
INV_WORKER_FDS = "worker-fds-flat"
INV_IPC = "ipc-objects-constant"
INV_TEARDOWN = "nothing-left-after-close"

#: Every invariant the machine checks, with what it means.
INVARIANTS: dict[str, str] = {
    INV_MASTER: "the master answers every control request: it neither dies (SIGPIPE) nor hangs",
    INV_WORKERS: "no worker exits except those the test killed (or, cleanly, one an injected "
    "EPIPE told the master was dead)",
    INV_CLIENT: "every client is answered and closed, or closed (EOF/reset), within the "
    "deadline; none is left hanging",
    INV_LOST: "a request ends without an answer only if no live worker was free to take it, "
    "a worker was killed since it was sent, or a fault was injected into its dispatch",
    INV_MATCH: "an answer comes from a worker process, carries the client's own request and "
    "peer address, and from the worker that dispatch() named",
    INV_HELD: "a held connection stays open while its worker lives",
    INV_DISPATCH: "dispatch() returns a live worker's index, or raises OSError only where the "
    "contract allows it (no live worker, an injected fault, whose errno it carries as FLT-01 "
    "asks), and works again once fds are free",
    INV_MASTER_FDS: "the master holds no fd beyond its baseline after every step",
    INV_WORKER_FDS: "each live worker holds its baseline fds plus one per client it holds open",
    INV_IPC: "the set of IPC objects (kind and id) is constant while serving",
    INV_TEARDOWN: "after the master's close() no process and no IPC object is left, and every "
    "worker left on its own",
}


class InvariantViolation(AssertionError):
    """An FLT-05 invariant broke; ``invariant`` is its name (a key of ``INVARIANTS``)."""

    def __init__(self, invariant: str, detail: str) -> None:
        self.invariant = invariant
        self.detail = detail
        super().__init__(f"FLT-05 invariant broken: {invariant}: {detail}")


def answer_mismatches(c: Client, pids: list[int]) -> list[str]:
    """answers-match-clients: how the answer of ``c`` is not its own, from the right worker."""
    reply = c.reply
    assert reply is not None
    problems = []
    if reply.data != c.payload.decode():
        problems.append(f"it answers request {reply.data!r}, not {c.payload.decode()!r}")
    if reply.peer != c.local:
        problems.append(f"the worker's peer is {reply.peer}, the client is {c.local}")
    if reply.index is None or not 0 <= reply.index < len(pids):
        problems.append(f"worker index {reply.index!r} is not one of this server's")
    elif reply.pid != pids[reply.index]:
        problems.append(f"pid {reply.pid} is not worker {reply.index}'s ({pids[reply.index]})")
    if c.dispatched_to is not None and reply.index != c.dispatched_to:
        problems.append(f"dispatch() returned worker {c.dispatched_to} (FP-04)")
    return problems


def left_after_close(
    report: ShutdownReport,
    close_errors: list[str],
    pids: list[int],
    killed: set[int],
    fd_passing: bool,
) -> list[str]:
    """nothing-left-after-close: what the master's close() and exit left behind."""
    problems: list[str] = []
    if report.processes_left:
        problems.append(f"processes still running after the master exited: {report.processes_left}")
    if report.ipc_left:
        problems.append(
            "IPC objects left after the master's close(): "
            + ", ".join(o.describe() for o in report.ipc_left)
        )
    problems.extend(close_errors)
    status = report.master_status
    if status is not None and (os.WIFSIGNALED(status) or os.WEXITSTATUS(status) != 0):
        problems.append(f"the master ended with {describe_status(status)}")
    if fd_passing:  # a shared listener gives workers nothing to notice the close by
        for pid, wstatus in sorted(report.worker_statuses.items()):
            if pid in pids and pid not in killed and os.WIFSIGNALED(wstatus):
                problems.append(
                    f"worker pid {pid} did not leave after the master's close() "
                    f"(it had to be {describe_status(wstatus)}; FP-11)"
                )
    return problems


def describe_exc(exc: BaseException) -> str:
    code = getattr(exc, "errno", None)
    name = f" {errno_name(code)}" if isinstance(code, int) else ""
    return f"{type(exc).__name__}{name} ({exc})"


def first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
