"""The model the FLT-05 rules drive: one server, its clients, and the log of steps.

What the machine knows between two steps (live workers, kills, baselines, the
clients and what each saw), how it reaches the server (control requests to
the master, a dispatch on request) and how a broken invariant is recorded:
everything the rules in ``machine.py`` use, so that they read as the events
and the invariants they are.
"""

from __future__ import annotations

import itertools
import socket
import time
from collections.abc import Callable
from typing import ClassVar, NoReturn, TypeVar

import pytest

from ...harness.server import HarnessError, ProxyServer
from ...harness.worker_role import HOLD
from ...leaks.fds import fd_count
from ...processes import has_ended
from ..evidence import asleep, wait_until
from .clients import (
    CLOSED,
    DONE,
    HELD,
    HOLDING,
    PENDING,
    Client,
    Clients,
    answer_index,
    first_answered,
)
from .invariants import (
    INV_CLIENT,
    INV_HELD,
    INV_LOST,
    INV_MASTER,
    INV_MATCH,
    InvariantViolation,
    answer_mismatches,
    first_line,
)

T = TypeVar("T")


class ProxyModel:
    """The state and the means of the FLT-05 machine (``ProxyMachine``).

    Class attributes are the knobs a subclass may change: the deadlines, how
    many held clients at most, and whether faults are injected.
    """

    #: Set by ``run_stateful`` on a per-run subclass.
    impl_factory: ClassVar[Callable[[], object] | None] = None
    impl_fd_passing: ClassVar[bool] = False
    #: (steps, violation) of every example that broke an invariant, in order.
    failures: ClassVar[list[tuple[list[str], InvariantViolation]]] = []
    pytest_request: ClassVar[pytest.FixtureRequest | None] = None

    #: Seconds a client may take to be answered and closed, or closed. Loopback
    #: answers take milliseconds; every failing example a shrink tries that hangs
    #: costs this much, so it is not larger than it needs to be.
    client_timeout: ClassVar[float] = 2.0
    #: Seconds a new request may take while another client is held before it
    #: counts as queued behind a busy worker (pending) rather than served.
    busy_window: ClassVar[float] = 0.3
    #: Seconds fd counts may take to come back to their expected value.
    settle_timeout: ClassVar[float] = 1.0
    max_holds: ClassVar[int] = 3
    allow_faults: ClassVar[bool] = True

    def __init__(self) -> None:
        super().__init__()  # the next class in the machine's MRO: RuleBasedStateMachine
        self.srv: ProxyServer | None = None
        self.started = False
        self.workers_left = 0  # for preconditions: workers not yet chosen by kill_worker
        self.open_holds = 0  # for preconditions: held clients not yet closed by close_client
        self.last_used: dict[int, int] = {}  # worker -> when it last answered (a counter)
        self._uses = itertools.count()
        self.violation: InvariantViolation | None = None
        self.fd_passing = False
        self.auto = True
        self.steps: list[str] = []
        self.failed: str | None = None
        self.alive: set[int] = set()
        self.pids: list[int] = []
        self.killed_pids: set[int] = set()
        self.kills = 0
        self.written_off = 0  # EPIPE injections: the master may count a live worker as dead
        self.clients = Clients()
        self.master_base: dict[int, str] = {}  # fd -> what it refers to
        self.worker_base: dict[int, int] = {}
        self.ipc_base: set[tuple[str, int]] = set()

    # -- the client model ----------------------------------------------------

    def judge_clients(self) -> None:
        """Judge the clients answered or ended since the last look: answers-match-clients,
        held-connections-open, no-lost-connections."""
        for c in list(self.clients.open):
            if c.state in (HELD, DONE) and c.answered and not c.checked:
                c.checked = True
                if c.reply is None:
                    self._violate(
                        INV_MATCH, f"{c.name}: the answer is not a worker's reply: {c.garbled}"
                    )
                problems = answer_mismatches(c, self.pids)
                if problems:
                    self._violate(
                        INV_MATCH,
                        f"{c.name} answered by worker {c.worker}: " + "; ".join(problems),
                    )
                if c.worker is not None:
                    self.last_used[c.worker] = next(self._uses)
            if c.open:
                continue
            self.clients.open.remove(c)
            if c.state == CLOSED:
                continue
            if c.was_held:
                if c.worker in self.alive:
                    self._violate(
                        INV_HELD,
                        f"{c.name}, held open by worker {c.worker}, ended ({c.end}) although "
                        "the worker is alive and the client did not close it",
                    )
                continue
            if not c.answered and not (c.excuse or self.kills > c.kills_before):
                self._violate(
                    INV_LOST,
                    f"{c.name} ended ({c.end}) without an answer although worker(s) "
                    f"{sorted(self.alive)} were alive and free, none was killed since, and "
                    "no fault was injected: the connection was lost (FP-08)",
                )

    def _free_workers(self) -> int:
        busy = sum(1 for c in self.clients.held() if c.worker in self.alive)
        return len(self.alive) - busy - len(self.clients.pending())

    def _excuse_now(self) -> str | None:
        if not self.alive:
            return "no worker was alive"
        if len(self.alive) <= self.written_off:
            return "EPIPE was injected: the master may count every live worker as dead"
        if self._free_workers() <= 0:
            return "every live worker was busy"
        return None

    def _new_client(self, kind: str) -> Client:
        """Connect and send the request; the answer is read by ``_await``."""
        srv = self._srv()
        for c in self.clients.open:
            c.pump()
        self.judge_clients()
        number = self.clients.next_number()
        try:
            sock = srv.connect(timeout=self.client_timeout)
        except OSError as exc:
            self._violate(INV_CLIENT, f"client {number}: connect failed while serving: {exc}")
        payload = (HOLD if kind == HOLDING else b"ping") + f" c{number}".encode()
        local = sock.getsockname()
        client = Client(
            number, kind, sock, payload, (local[0], local[1]), self.kills, self._excuse_now()
        )
        self.clients.add(client)
        self._note(client.name)
        try:
            sock.sendall(payload)
        except OSError as exc:
            client.finish(f"reset on send ({exc})")
        sock.setblocking(False)
        return client

    def _await(self, client: Client) -> None:
        """Give a new client its answer (or its end); judge how it ended."""
        if client.dispatch_error is not None:
            # dispatch gave up on it: the connection must end, not hang (FLT-01, FP-09)
            if not self.clients.wait(lambda: client.state != PENDING, self.client_timeout):
                self._violate(
                    INV_CLIENT,
                    f"{client.name}: dispatch raised {client.dispatch_error}, but the client "
                    f"saw no EOF or reset within {self.client_timeout}s (left hanging)"
                    f"{self._master_fd_hint()}",
                )
        else:
            others_busy = any(c.open for c in self.clients.open if c is not client)
            if not others_busy:
                wait = self.client_timeout
            elif self._free_workers() > 0:
                wait = self.busy_window
            else:
                wait = 0.02
            done = self.clients.wait(lambda: client.state != PENDING, wait)
            if not done and not others_busy:
                self._violate(INV_CLIENT, self._hung(client))
        self.judge_clients()
        if client.state == PENDING:
            self._note("pending: queued behind a busy worker")
        elif client.state == HELD:
            self._note(f"held by worker {client.worker}")
        elif client.state == DONE:
            answer = f"answered by worker {client.worker}" if client.answered else "no answer"
            self._note(f"{answer}, {client.end}")

    def _hung(self, client: Client) -> str:
        if client.answered:
            return (
                f"{client.name} was answered by worker {client.worker}, but the connection "
                f"never ended: no EOF or reset within {self.client_timeout}s although no "
                f"worker was busy (a copy of it is still open somewhere){self._master_fd_hint()}"
            )
        return (
            f"{client.name} got neither an answer nor EOF/reset within {self.client_timeout}s "
            f"although no worker was busy (live workers: {sorted(self.alive)})"
            f"{self._master_fd_hint()}"
        )

    def _victim(self, which: str) -> int:
        self.judge_clients()
        held = [c.worker for c in self.clients.held() if c.worker in self.alive]
        if which == "busy" and held:
            return held[0]
        idle = [w for w in sorted(self.alive) if w not in held] or sorted(self.alive)
        idle.sort(key=lambda w: self.last_used.get(w, -1))
        return idle[-1] if which == "recent" else idle[0]

    def _warm_up(self, count: int) -> None:
        """Hold one client per worker, then release them in worker order.

        This gets past the first dispatch (which may change the master's fds)
        before the baselines are taken, and leaves an implementation that
        queues its idle workers (idle tokens) with the queue in index order,
        whatever order the workers started in: a replayed run then sends its
        first requests to the same workers as the run it replays. A client
        queued behind a held one (no idle-worker preference) is answered, and
        released, once the others are.
        """
        srv = self._srv()
        wait_until(lambda: asleep(self.pids), self.settle_timeout)  # all wait in accept()
        socks: list[socket.socket] = []
        try:
            waiting: list[socket.socket] = []
            held: dict[int, socket.socket] = {}
            for n in range(count):
                try:
                    sock = srv.connect(timeout=self.client_timeout)
                    socks.append(sock)
                    sock.sendall(HOLD + b" warm-up")
                except OSError as exc:
                    self._violate(INV_CLIENT, f"warm-up client {n + 1}: {exc}")
                index = answer_index(sock, self.busy_window if held else self.client_timeout)
                if index is None:
                    waiting.append(sock)
                else:
                    held[index] = sock
            while held:
                index = min(held)
                self._release(index, held.pop(index))
                if waiting and not held:
                    late = first_answered(waiting, self.client_timeout)
                    if late is None:
                        self._violate(
                            INV_CLIENT,
                            f"{len(waiting)} warm-up client(s) of a fresh server got no "
                            f"answer within {self.client_timeout}s once every worker was free",
                        )
                    waiting.remove(late[0])
                    held[late[1]] = late[0]
        finally:
            for sock in socks:
                sock.close()

    def _release(self, index: int, sock: socket.socket) -> None:
        """Close a warm-up client and wait until its worker is back in accept()."""
        self.last_used[index] = next(self._uses)
        pid = self.pids[index]
        before = fd_count(pid)
        sock.close()
        wait_until(lambda: fd_count_or(pid, 0) < before, self.settle_timeout)
        # blocked again: back in accept(), its idle token (if it has any) is queued
        wait_until(lambda: asleep([pid]), self.settle_timeout)

    # -- the master: control requests, dispatch, faults ----------------------

    def _master(self, what: str, op: Callable[[], T]) -> T:
        """A control request to the master; a hang or a death breaks master-alive."""
        try:
            return op()
        except HarnessError as exc:
            self._violate(INV_MASTER, f"{what}: {first_line(exc)}")

    def _dispatch_raw(self, timeout: float) -> int | Exception:
        srv = self._srv()
        try:
            return srv.dispatch(timeout=timeout)
        except HarnessError as exc:
            self._violate(INV_MASTER, f"dispatch: {first_line(exc)}")
        except Exception as exc:
            return exc

    def _timed_dispatch(self, timeout: float) -> tuple[int | Exception, float]:
        start = time.monotonic()
        outcome = self._dispatch_raw(timeout)
        return outcome, time.monotonic() - start

    # -- step log and small helpers ------------------------------------------

    def _step(self, text: str) -> None:
        self.steps.append(f"{len(self.steps) + 1}. {text}")

    def _note(self, text: str) -> None:
        if self.steps:
            self.steps[-1] += f"; {text}"

    def _violate(self, invariant: str, detail: str) -> NoReturn:
        self.failed = invariant
        self._note(f"BROKEN: {invariant}")
        violation = InvariantViolation(invariant, detail)
        self.violation = violation
        type(self).failures.append((list(self.steps), violation))
        raise violation

    def _srv(self) -> ProxyServer:
        assert self.srv is not None, "no server (initialize did not run)"
        return self.srv

    def _mode_note(self) -> str:
        return "" if not self.fd_passing else (", auto dispatch" if self.auto else ", dispatch")

    def _master_fd_hint(self) -> str:
        srv = self.srv
        if srv is None or srv.master_pid is None or not self.master_base:
            return ""
        try:
            now = fd_count(srv.master_pid)
        except ProcessLookupError:
            return "; the master is gone"
        if now <= len(self.master_base):  # fewer is allowed (see master-fds-flat)
            return ""
        return f"; the master holds {now} fds, {len(self.master_base)} at the baseline"

    def _ipc(self) -> set[tuple[str, int]]:
        return {(o.kind, o.id) for o in self._srv().ipc_objects()}


def fd_count_or(pid: int, default: int) -> int:
    """The fds of ``pid``, or ``default`` once it has ended (a zombie has none): the
    workers-alive check, not the fd count, reports a worker that vanished."""
    try:
        count = fd_count(pid)
    except ProcessLookupError:
        return default
    return default if has_ended(pid) else count  # asked after: a count mid-exit is partial
