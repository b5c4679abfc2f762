"""Evidence the suites read from the kernel about a running server."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable

import psutil

from ..harness.server import ProxyServer, Reply
from ..leaks.fds import FdInfo, fd_count, fd_inventory, summarize


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


def fd_counts(server: ProxyServer, names: list[str] | None = None) -> dict[str, int]:
    procs = processes(server)
    return {name: fd_count(pid) for name, pid in procs.items() if names is None or name in names}


def describe_fds(pid: int) -> str:
    return ", ".join(f"{k}={v}" for k, v in summarize(fd_inventory(pid)).items() if v)


def assert_fd_counts_flat(server: ProxyServer, before: dict[str, int], what: str) -> None:
    after = fd_counts(server, list(before))
    grown = {n: (before[n], after[n]) for n in before if after[n] != before[n]}
    if grown:
        procs = processes(server)
        lines = [
            f"{name} (pid {procs[name]}): {a} -> {b} fds [{describe_fds(procs[name])}]"
            for name, (a, b) in grown.items()
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


def outcome_of(call: Callable[[], object]) -> object:
    """What a call gave: its return value, or the exception it raised, so that a check
    can say what came instead of what it awaited (pytest.raises only says "DID NOT RAISE")."""
    try:
        return call()
    except Exception as exc:
        return exc


def wait_in_accept(srv: ProxyServer, indices: list[int], timeout: float = 10.0) -> None:
    """Give the workers ``indices`` up to ``timeout`` seconds to wait in ``accept`` again.

    FP-12 asks that new connections go to workers *already waiting* in
    ``accept``, and SP-13 that sequential load reaches every worker: both
    judge the proxy's choice among waiting workers, not the scheduler's
    timing on a loaded machine. Asleep is not enough: an exec program's worker sleeps on its
    control connection between two accepts, before it has told its master it
    is idle. So a worker counts as waiting once the harness has called its
    ``accept`` again (one "accepting" event more than the connections it
    served) and the implementation's process has then been seen asleep twice
    in a row (inside that accept). Not an assertion: on a loaded machine a
    worker that is slow to get there is waited for, never blamed.
    """
    deadline = time.monotonic() + timeout

    def back_in_accept(index: int) -> bool:
        mine = [e for e in srv.events.events if e.role == "worker" and e.index == index]
        served = sum(e.kind == "served" for e in mine)
        return sum(e.kind == "accepting" for e in mine) > served

    for index in indices:
        while not back_in_accept(index) and time.monotonic() < deadline:
            srv.events.drain(0.01)
        with contextlib.suppress(psutil.NoSuchProcess):
            proc = psutil.Process(srv.worker_pids[index])
            asleep = 0
            while asleep < 2 and time.monotonic() < deadline:
                asleep = asleep + 1 if proc.status() == psutil.STATUS_SLEEPING else 0
                time.sleep(0.005)


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not true within {timeout}s")
        time.sleep(0.005)
