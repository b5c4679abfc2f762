"""Evidence the suites read from the kernel about a running server, and how they state it.

One place for what more than one suite reads (processes, fds, IPC objects, the
events the server's processes report, what a client saw), so that every
requirement judges the same observation the same way.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import psutil
import pytest

from ..faults.errors import errno_name, parse_errno
from ..harness.server import ProxyServer, Reply
from ..leaks.fds import FdInfo, fd_count, fd_inventory, fd_links, summarize
from ..leaks.ipcs import IpcObject


def processes(server: ProxyServer, inst: int = 0) -> dict[str, int]:
    """name -> pid for the master and the live workers of instance ``inst``: the
    implementation's own processes (an exec: implementation's are the program's)."""
    pids = server.impl_pids(inst)
    out = {"master": pids["master"] or 0}
    for i, pid in enumerate(pids["workers"]):
        out[f"worker {i}"] = pid
    return out


def left_hanging(reply: Reply) -> bool:
    """Nobody answered and nobody closed: the client was left hanging.

    An answered connection that does not end is a copy kept in another
    process (SP-11's defect), so requirements about being served count only
    this, and a proxy is blamed once, on SP-11, for a kept copy.
    """
    return not reply.answered and reply.end == "timeout"


def describe_reply(reply: Reply, timeout: float) -> str:
    """What a client saw, as a failure message states it."""
    if reply.answered:
        return f"was answered by worker {reply.index} (pid {reply.pid}), then {reply.end}"
    return {
        "timeout": f"got no answer and no end within {timeout:g}s (left hanging)",
        "eof": "got EOF without an answer",
        "reset": "got a reset without an answer",
        "refused": "was refused (nothing listens on the port)",
    }.get(reply.end, f"got no answer ({reply.end})")


def assert_served_each(
    server: ProxyServer, count: int, when: str, timeout: float = 5.0, inst: int = 0
) -> None:
    """``count`` requests in a row, each of them answered; ``when`` says in which state."""
    for n in range(count):
        reply = server.request_reply(timeout=timeout, inst=inst)
        assert reply.answered, f"request {n} {when} {describe_reply(reply, timeout)}"


def fd_counts(server: ProxyServer, names: list[str] | None = None) -> dict[str, int]:
    procs = processes(server)
    return {name: fd_count(pid) for name, pid in procs.items() if names is None or name in names}


def describe_fds(pid: int) -> str:
    return ", ".join(f"{k}={v}" for k, v in summarize(fd_inventory(pid)).items() if v)


def assert_fd_counts_flat(
    server: ProxyServer, before: dict[str, int], what: str, *, may_release: bool = False
) -> None:
    """Each process holds as many fds as ``before``. ``may_release``: fewer is fine too,
    where releasing something is no defect (a leak check over serving, close(), a
    dead worker's channel end); without it a refused call must change nothing."""
    after = fd_counts(server, list(before))
    changed = {
        n: (before[n], after[n])
        for n in before
        if after[n] > before[n] or (after[n] < before[n] and not may_release)
    }
    if changed:
        procs = processes(server)
        lines = [
            f"{name} (pid {procs[name]}): {a} -> {b} fds [{describe_fds(procs[name])}]"
            for name, (a, b) in changed.items()
        ]
        raise AssertionError(f"fd counts changed {what}: " + "; ".join(lines))


def kinds(server: ProxyServer, who: str | int, kind: str) -> list[FdInfo]:
    return [f for f in server.fds(who) if f.kind == kind]


def unix_sockets(pid: int) -> set[str]:
    """Identities (``socket:[inode]``) of the AF_UNIX sockets a process holds."""
    return {f.target for f in fd_inventory(pid) if f.kind == "unix"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_in_accept(srv: ProxyServer, indices: list[int], timeout: float = 10.0) -> None:
    """Give the workers ``indices`` up to ``timeout`` seconds to wait in ``accept`` again.

    FP-12 asks that new connections go to workers *already waiting* in
    ``accept``, and SP-13 that sequential load reaches every worker: both
    judge the proxy's choice among waiting workers, not the scheduler's
    timing on a loaded machine. Asleep is not enough: an exec program's worker sleeps on its
    control connection between two accepts, before it has told its master it
    is idle. So a worker counts as waiting once the harness has called its
    ``accept`` again (one "accepting" event more than the connections it
    served) and the implementation's process is then asleep (:func:`asleep`).
    Not an assertion: on a loaded machine a worker that is slow to get there is
    waited for, never blamed.
    """
    deadline = time.monotonic() + timeout

    def back_in_accept(index: int) -> bool:
        mine = [e for e in srv.events.events if e.role == "worker" and e.index == index]
        served = sum(e.kind == "served" for e in mine)
        return sum(e.kind == "accepting" for e in mine) > served

    for index in indices:
        while not back_in_accept(index) and time.monotonic() < deadline:
            srv.events.drain(0.01)
        pids = [srv.worker_pids[index]]
        wait_until(lambda: asleep(pids), max(0.0, deadline - time.monotonic()))  # noqa: B023


def asleep(pids: Sequence[int]) -> bool:
    """Every process of ``pids`` is asleep (blocked in a system call), seen twice in a row.

    Once is not enough: a process that runs between two system calls is
    briefly asleep in neither. A process that is gone counts as asleep: the
    check that watches for deaths reports it, not the one that waits.
    """

    def once() -> bool:
        try:
            return all(psutil.Process(p).status() == psutil.STATUS_SLEEPING for p in pids)
        except psutil.NoSuchProcess:
            return True

    if not once():
        return False
    time.sleep(0.002)
    return once()


def wait_until(predicate: Callable[[], bool], timeout: float) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` seconds have passed; whether it is.

    For what the kernel shows a little after the step that causes it (an fd
    closed by another process, a process back in a system call).
    """
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


# -- fds and IPC objects of the master across a step ---------------------------


def describe_objects(objects: Sequence[IpcObject]) -> str:
    return "; ".join(o.describe() for o in objects) or "none"


@dataclass(frozen=True)
class FdSnapshot:
    """The fds of one process: how many, and what they refer to."""

    count: int
    targets: frozenset[str]

    @classmethod
    def of(cls, pid: int) -> FdSnapshot:
        links = fd_links(pid)
        return cls(len(links), frozenset(links.values()))


@dataclass(frozen=True)
class Baseline:
    """The master before a step: its fds and the IPC objects."""

    fds: FdSnapshot
    ipc: tuple[IpcObject, ...]

    @classmethod
    def take(cls, srv: ProxyServer) -> Baseline:
        return cls(FdSnapshot.of(master_pid(srv)), tuple(srv.ipc_objects()))


def master_pid(srv: ProxyServer) -> int:
    assert srv.master_pid is not None, "the server has no master"
    return srv.master_pid


def assert_released(srv: ProxyServer, fds: FdSnapshot, ipc: Sequence[IpcObject], what: str) -> None:
    """The master holds no fd beyond ``fds`` and there is no IPC object beyond ``ipc``."""
    now = FdSnapshot.of(master_pid(srv))
    opened = sorted(now.targets - fds.targets)
    assert not opened and now.count <= fds.count, (
        f"{what}: the master holds {now.count} fds, {fds.count} before; "
        f"still open from the step: {', '.join(opened) or 'duplicates of older fds'}"
    )
    left = [o for o in srv.ipc_objects() if o not in ipc]
    assert not left, f"{what}: IPC objects left: {describe_objects(left)}"


# -- what the processes reported, and what a check could not observe -----------


def trouble(srv: ProxyServer, kinds: Sequence[str]) -> str:
    """The first event of one of ``kinds`` the server's processes reported, in one line, or ""."""
    srv.events.drain()
    for e in srv.events.events:
        if e.kind in kinds:
            detail = e.detail.get("message") or e.detail
            return f"{e.role} {e.index} (pid {e.pid}) reported {e.kind}: {detail}"
    return ""


def instrument(condition: object, what: str) -> None:
    """The instrument of this check did not work here (a signal never arrived, say): the
    requirement could not be checked, which is a skip, not the proxy's outcome."""
    if not condition:
        pytest.skip(f"could not be checked here: {what}")


def hidden_errno(raised: OSError, injected: str, took: float, timeout: float) -> str:
    """Why a dispatch that raised ``raised`` hides the ``injected`` errno; "" if it does not.

    FLT-01's rule, which FLT-05's dispatch-outcome invariant applies too: the
    error dispatch raises carries the injected errno, or is the TimeoutError of
    a dispatch that retried for its whole ``timeout``.
    """
    retried = isinstance(raised, TimeoutError) and took >= timeout * 0.9
    if raised.errno == parse_errno(injected) or retried:
        return ""
    name = errno_name(raised.errno) if raised.errno else "none"
    return (
        f"dispatch raised errno {raised.errno} ({name}) instead of the injected {injected}, "
        f"which hides the cause: {raised}"
    )
