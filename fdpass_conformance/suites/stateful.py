"""FLT-05: random interleavings of traffic, kills and faults, as a Hypothesis state machine.

``ProxyMachine`` drives one server under test (a ``ProxyServer``: a forked
master running the implementation, and its workers) per Hypothesis example.
Its rules are the events of a proxy's life: a client request, a client that
is held open by its worker, data sent on a held client, a client closed, a
worker SIGKILLed, the master switched between automatic and manual dispatch,
and a fault injected into one dispatch (a failing ``sendmsg``, or a full fd
table in the master). After every step it checks the invariants named in
``INVARIANTS``; at teardown it closes the proxy in the master and checks that
nothing is left. A broken invariant raises ``InvariantViolation``, whose first
line names it; Hypothesis then shrinks the run to a short sequence of steps
and prints it, and ``run_stateful`` records it in the test's
``user_properties`` as ``fdpass_steps``.

Client model. A request is answered by a worker and then closed (EOF), or it
ends without an answer only for a reason the model knows of: no live worker
was free to take it, a worker was killed since it was sent, or a fault was
injected into its dispatch. A request sent while every live worker is busy
with a held client may wait ("pending") until a held client is closed; once
no client is held, every pending request must end within the deadline.

Runs are reproducible: the default profile uses a fixed seed, and every run
records its profile and seed in ``user_properties`` (``fdpass_hypothesis``);
``--hypothesis-seed=N`` replays the run of seed N under any profile.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import random
import select
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, NoReturn, TypeVar, cast

import psutil
import pytest
from hypothesis import HealthCheck, Phase, seed, settings
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from ..contract import is_fd_passing
from ..faults.errors import errno_name
from ..harness.server import HarnessError, ProxyServer, Reply, ServerOptions
from ..harness.worker_role import HOLD
from ..leaks.fds import fd_count, fd_inventory
from .faultctl import injected

T = TypeVar("T")

# -- profiles ------------------------------------------------------------------

#: The profile of an ordinary conformance run: bounded, and the same sequences every run.
PROFILE_DEFAULT = "fdpass-default"
#: Many more and longer sequences, from a fresh seed each run (recorded in the report).
PROFILE_THOROUGH = "fdpass-thorough"
#: ``--fdpass-hypothesis-profile`` values that name the profiles above.
PROFILE_ALIASES = {"default": PROFILE_DEFAULT, "thorough": PROFILE_THOROUGH}
#: The seed of the default profile (and of every derandomized profile).
FIXED_SEED = 20_050_105

settings.register_profile(
    PROFILE_DEFAULT,
    max_examples=15,
    stateful_step_count=12,
    deadline=None,
    derandomize=True,
    database=None,  # nothing written into the user's tree; the seed makes runs repeatable
    report_multiple_bugs=False,  # one failure, one invariant named in the first line
    print_blob=False,
    phases=(Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink),
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
        HealthCheck.data_too_large,
    ],
)
settings.register_profile(
    PROFILE_THOROUGH,
    parent=settings.get_profile(PROFILE_DEFAULT),
    max_examples=200,
    stateful_step_count=40,
    derandomize=False,
)


def resolve_profile(name: str) -> tuple[str, settings]:
    """The Hypothesis profile for a ``--fdpass-hypothesis-profile`` value.

    ``default`` and ``thorough`` name this module's profiles; any other name
    must be a profile the user registered with ``settings.register_profile``.
    """
    real = PROFILE_ALIASES.get(name, name)
    try:
        return real, settings.get_profile(real)
    except InvalidArgument:
        known = ", ".join(sorted(PROFILE_ALIASES))
        raise pytest.UsageError(
            f"--fdpass-hypothesis-profile={name}: no such Hypothesis profile "
            f"(use {known}, or register one with hypothesis.settings.register_profile)"
        ) from None


def profile_scale(name: str) -> float:
    """The work of profile ``name`` (sequences x steps) over the default's, at least 1."""
    _real, chosen = resolve_profile(name)
    default = settings.get_profile(PROFILE_DEFAULT)
    work = chosen.max_examples * chosen.stateful_step_count
    return max(1.0, work / (default.max_examples * default.stateful_step_count))


# -- invariants ----------------------------------------------------------------

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
    INV_WORKERS: "no worker exits except those the test killed",
    INV_CLIENT: "every client is answered and closed, or closed (EOF/reset), within the "
    "deadline; none is left hanging",
    INV_LOST: "a request ends without an answer only if no live worker was free to take it, "
    "a worker was killed since it was sent, or a fault was injected into its dispatch",
    INV_MATCH: "an answer comes from a worker process, carries the client's own request and "
    "peer address, and from the worker that dispatch() named",
    INV_HELD: "a held connection stays open while its worker lives",
    INV_DISPATCH: "dispatch() returns a live worker's index, or raises OSError only where the "
    "contract allows it (no live worker, an injected fault), and works again once fds are free",
    INV_MASTER_FDS: "the master's fd table is back to its baseline after every step",
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


# -- clients -------------------------------------------------------------------

PLAIN, HOLDING = "plain", "hold"
PENDING, HELD, DONE, CLOSED = "pending", "held", "done", "closed"

#: Which worker ``kill_worker`` kills: "next", the idle worker that served least
#: recently (the one a FIFO of idle workers, or round-robin, hands the next
#: connection to); "recent", the idle one that served last; "busy", the one
#: holding the oldest held client (else as "next"). Chosen from what the test saw,
#: not drawn as an index, so that a shrunk run kills the worker that matters.
VICTIMS = ("next", "busy", "recent")

#: Faults the ``inject`` rule draws from: ``call:ERRNO``.
FAULTS = ("sendmsg:EPIPE", "sendmsg:ENOBUFS", "sendmsg:ETOOMANYREFS", "accept:EMFILE")


@dataclass(eq=False)
class Client:
    """One client connection and what the model knows about it."""

    number: int
    kind: str  # PLAIN: answered, then closed by the worker; HOLDING: kept open by it
    sock: socket.socket
    payload: bytes
    local: tuple[str, int]
    kills_before: int  # kills before its request was sent
    excuse: str | None = None  # why ending unanswered would be legitimate
    state: str = PENDING
    data: bytes = b""
    end: str = ""
    reply: Reply | None = None
    garbled: str = ""
    was_held: bool = False
    checked: bool = False
    dispatched_to: int | None = None
    dispatch_error: str | None = None

    @property
    def name(self) -> str:
        return f"client {self.number} ({self.kind})"

    @property
    def answered(self) -> bool:
        return b"\n" in self.data

    @property
    def worker(self) -> int | None:
        return None if self.reply is None else self.reply.index

    def pump(self) -> None:
        """Read whatever has arrived, without blocking; note the answer and the end."""
        while self.state in (PENDING, HELD):
            try:
                chunk = self.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                resets = (errno.ECONNRESET, errno.EPIPE)
                self._finish("reset" if exc.errno in resets else f"error {exc}")
                return
            if not chunk:
                self._finish("eof")
                return
            self.data += chunk
            if self.reply is None and not self.garbled and self.answered:
                self._parse("open")
                if self.kind == HOLDING:
                    self.state = HELD
                    self.was_held = True

    def _parse(self, end: str) -> None:
        try:
            self.reply = Reply.parse(self.data, end)
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            self.garbled = f"{type(exc).__name__}: {exc}; got {self.data[:200]!r}"

    def _finish(self, end: str) -> None:
        if self.answered and not self.garbled:
            self._parse(end)
        self.state, self.end = DONE, end
        self.sock.close()

    def close(self) -> None:
        if self.state in (PENDING, HELD):
            self.state = CLOSED
        self.sock.close()


def sigpipe_default() -> None:
    """master_setup: like a C or PHP master, SIGPIPE kills unless sends use MSG_NOSIGNAL."""
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)


def _describe_exc(exc: BaseException) -> str:
    code = getattr(exc, "errno", None)
    name = f" {errno_name(code)}" if isinstance(code, int) else ""
    return f"{type(exc).__name__}{name} ({exc})"


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


# -- preconditions: functions of the rules run so far, never of timing ---------------
#
# Hypothesis replays a choice sequence to shrink a failure; if a precondition
# depended on how the server happened to behave (a client answered yet or not),
# a replay could offer other rules and the run would be reported as flaky.


def _serving(m: ProxyMachine) -> bool:
    return m.started


def _can_hold(m: ProxyMachine) -> bool:
    return m.started and m.open_holds < m.max_holds


def _can_kill(m: ProxyMachine) -> bool:
    # A shared listener has no one to close queued connections once every worker
    # is dead (the master only holds the listener): keep one alive there.
    return m.started and m.workers_left > (0 if m.impl_fd_passing else 1)


def _fd_passing(m: ProxyMachine) -> bool:
    return m.started and m.impl_fd_passing


def _can_inject(m: ProxyMachine) -> bool:
    return m.started and m.impl_fd_passing and m.allow_faults


# -- the machine ---------------------------------------------------------------


class ProxyMachine(RuleBasedStateMachine):
    """The FLT-05 state machine; ``run_stateful`` binds it to an implementation.

    Class attributes are the knobs a subclass may change: the deadlines, how
    many held clients at most, and whether faults are injected.
    """

    holds: ClassVar[Bundle[Client]] = Bundle("holds")

    #: Set by ``run_stateful`` on a per-run subclass.
    impl_factory: ClassVar[Callable[[], object] | None] = None
    impl_fd_passing: ClassVar[bool] = False
    #: (steps, violation) of every example that broke an invariant, in order.
    failures: ClassVar[list[tuple[list[str], InvariantViolation]]] = []
    pytest_request: ClassVar[pytest.FixtureRequest | None] = None
    #: The machine of the latest example; after a failure, that of the shrunk one.
    last: ClassVar[ProxyMachine | None] = None

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
        super().__init__()
        type(self).last = self
        self.srv: ProxyServer | None = None
        self.started = False
        self.workers_left = 0  # for preconditions: workers not yet chosen by kill_worker
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
        self.open_holds = 0
        self.clients: list[Client] = []  # pending or held
        self.every_client: list[Client] = []
        self._numbers = itertools.count(1)
        self.master_base: dict[int, str] = {}  # fd -> what it refers to
        self.worker_base: dict[int, int] = {}
        self.ipc_base: set[tuple[str, int]] = set()

    # -- step log ------------------------------------------------------------

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

    # -- rules ---------------------------------------------------------------

    @initialize(count=st.integers(1, 3), auto=st.booleans())
    def start(self, count: int, auto: bool) -> None:
        """Start a server with ``count`` workers; ``auto`` picks the dispatch mode (fd passing)."""
        self.started = True
        self.workers_left = count
        self._start(count, auto)

    def _start(self, count: int, auto: bool) -> None:
        factory = type(self).impl_factory
        if factory is None:
            raise RuntimeError("ProxyMachine: run it through run_stateful(), which sets the impl")
        self.srv = srv = ProxyServer(
            factory, ServerOptions(workers=count, master_setup=sigpipe_default)
        )
        try:
            srv.start()
        except HarnessError as exc:
            self._step(f"start {count} worker(s)")
            self._violate(INV_MASTER, f"the server did not start: {_first_line(exc)}")
        self.fd_passing = srv.fd_passing
        self.auto = auto or not self.fd_passing
        mode = (
            ("auto" if auto else "manual") + " dispatch" if self.fd_passing else "shared listener"
        )
        self._step(f"start {count} worker(s), {mode}")
        self.pids = list(srv.worker_pids)
        self.alive = set(range(count))
        self._warm_up(count)
        self._master_status()  # the master finished its last dispatch: it is quiet
        assert srv.master_pid is not None
        self.master_base = fd_table(srv.master_pid)
        self.worker_base = {i: fd_count(pid) for i, pid in enumerate(self.pids)}
        self.ipc_base = self._ipc()
        if self.fd_passing and not auto:
            self._master("set_auto(False)", lambda: srv.set_auto(False))
        self._note(
            f"baseline: master {len(self.master_base)} fds, workers "
            f"{[self.worker_base[i] for i in range(count)]} fds, {len(self.ipc_base)} IPC object(s)"
        )

    @precondition(_serving)
    @rule()
    def request(self) -> None:
        """A client sends one request and reads the answer until the worker closes."""
        self._step(f"request{self._mode_note()}")
        client = self._new_client(PLAIN)
        self._dispatch_if_manual(client)
        self._await(client)

    @precondition(_can_hold)
    @rule(target=holds)
    def hold(self) -> Client:
        """A client sends b"hold": its worker answers and keeps the connection open."""
        self.open_holds += 1
        return self._hold()

    def _hold(self) -> Client:
        self._step(f"hold{self._mode_note()}")
        client = self._new_client(HOLDING)
        self._dispatch_if_manual(client)
        self._await(client)
        return client

    @precondition(_serving)
    @rule(client=holds)
    def send(self, client: Client) -> None:
        """Send more data on a held client: the connection must still be open."""
        self._step(f"send on {client.name}")
        client.pump()
        if client.state != HELD:
            self._note(f"nothing to do: it is {client.state}")
            return
        with contextlib.suppress(OSError):  # a dropped connection is judged below
            client.sock.send(b"more")
        self._wait(lambda: client.state != HELD, 0.02)
        self._collect()
        self._note(f"still open, worker {client.worker}")

    @precondition(_serving)
    @rule(client=consumes(holds))
    def close_client(self, client: Client) -> None:
        """Close a held client from the client's side; its worker must release the fd."""
        self.open_holds -= 1
        self._close_client(client)

    def _close_client(self, client: Client) -> None:
        self._step(f"close {client.name}")
        client.pump()
        was_held, worker = client.state == HELD, client.worker
        self._note(f"it was {client.state}")
        client.close()
        self._collect()
        if was_held and worker is not None and worker in self.alive and not self._pending():
            self._check_worker_fds([worker], f"after {client.name} was closed")

    @precondition(_can_kill)
    @rule(which=st.sampled_from(VICTIMS))
    def kill_worker(self, which: str) -> None:
        """SIGKILL a worker (see ``VICTIMS``); the clients it held must see EOF or a reset."""
        self.workers_left -= 1
        self._kill_worker(which)

    def _victim(self, which: str) -> int:
        self._collect()
        held = [c.worker for c in self.clients if c.state == HELD and c.worker in self.alive]
        if which == "busy" and held:
            return held[0]
        idle = [w for w in sorted(self.alive) if w not in held] or sorted(self.alive)
        idle.sort(key=lambda w: self.last_used.get(w, -1))
        return idle[-1] if which == "recent" else idle[0]

    def _kill_worker(self, which: str) -> None:
        srv = self._srv()
        worker = self._victim(which)
        pid = self.pids[worker]
        self._step(f"kill_worker {worker} ({which}; pid {pid}) with SIGKILL")
        srv.kill_worker(worker)
        self.alive.discard(worker)
        self.killed_pids.add(pid)
        self.kills += 1
        victims = [c for c in self.clients if c.state == HELD and c.worker == worker]
        if victims and not self._wait(
            lambda: all(c.state != HELD for c in victims), self.client_timeout
        ):
            stuck = ", ".join(c.name for c in victims if c.state == HELD)
            self._violate(
                INV_CLIENT,
                f"{stuck}, held by worker {worker}, saw no EOF or reset within "
                f"{self.client_timeout}s after the worker was SIGKILLed: another process "
                f"still holds the connection{self._master_fd_hint()}",
            )
        if victims:
            self._note(f"held {', '.join(c.name for c in victims)}: ended")
        self._collect()

    @precondition(_fd_passing)
    @rule(auto=st.booleans())
    def set_mode(self, auto: bool) -> None:
        """Switch the master between dispatching by itself and dispatching on request."""
        srv = self._srv()
        self._step(f"set_mode: {'auto' if auto else 'manual'} dispatch")
        self._master(f"set_auto({auto})", lambda: srv.set_auto(auto))
        self.auto = auto

    @precondition(_can_inject)
    @rule(fault=st.sampled_from(FAULTS))
    def inject(self, fault: str) -> None:
        """One request whose dispatch meets a fault: a failing sendmsg, or a full fd table."""
        srv = self._srv()
        call, error = fault.split(":")
        self._step(f"inject {error} into the master's {call}() for one dispatch")
        was_auto = self.auto
        if was_auto:  # the fault covers exactly one dispatch, made on request
            self._master("set_auto(False)", lambda: srv.set_auto(False))
            self.auto = False
        client = self._new_client(PLAIN)
        if call == "sendmsg":
            self._inject_sendmsg(client, error)
        else:
            self._inject_emfile(client)
        self._await(client)
        if was_auto:
            self._master("set_auto(True)", lambda: srv.set_auto(True))
            self.auto = True

    # -- invariants ----------------------------------------------------------

    @invariant()
    def invariants_hold(self) -> None:
        """Every invariant of ``INVARIANTS`` but the teardown one, in a fixed order."""
        if self.srv is None:
            return
        self.srv.events.drain()  # keep the event pipe from filling; crash reports stay readable
        self._master_status()
        self._resolve_pending()
        self._check_held_open()
        self._check_master_fds()
        if not self._pending():  # a pending request may be in a worker's hands right now
            self._check_worker_fds(sorted(self.alive), "after the step")
        ipc = self._ipc()
        if ipc != self.ipc_base:
            self._violate(
                INV_IPC,
                f"IPC objects changed while serving: {sorted(self.ipc_base)} at the baseline, "
                f"now {sorted(ipc)} (kind, id)",
            )

    def teardown(self) -> None:
        """Close the proxy in the master and check that nothing is left; raise a violation."""
        srv = self.srv
        try:
            if srv is not None and self.violation is None:
                for client in self.every_client:
                    client.close()
                self._step("teardown: close the proxy in the master, reap every process")
                self._check_teardown(srv)
        finally:
            self.close_all()

    def close_all(self) -> None:
        """Close every client and the server, without checking anything; idempotent."""
        srv, self.srv = self.srv, None
        for client in self.every_client:
            client.close()
        if srv is not None:
            srv.close()

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
        _settles(_all_blocked(self.pids), self.settle_timeout)  # every worker waits in accept()
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
                index = _answer_index(sock, self.busy_window if held else self.client_timeout)
                if index is None:
                    waiting.append(sock)
                else:
                    held[index] = sock
            while held:
                index = min(held)
                self._release(index, held.pop(index))
                if waiting and not held:
                    sock = waiting.pop(0)
                    late = _answer_index(sock, self.client_timeout)
                    if late is None:
                        self._violate(
                            INV_CLIENT,
                            f"a warm-up client of a fresh server got no answer within "
                            f"{self.client_timeout}s once a worker was free",
                        )
                    held[late] = sock
        finally:
            for sock in socks:
                sock.close()

    def _release(self, index: int, sock: socket.socket) -> None:
        """Close a warm-up client and wait until its worker is back in accept()."""
        self.last_used[index] = next(self._uses)
        pid = self.pids[index]
        before = fd_count(pid)
        sock.close()
        _settles(_fds_below(pid, before), self.settle_timeout)
        # blocked again: back in accept(), its idle token (if it has any) is queued
        _settles(_all_blocked([pid]), self.settle_timeout)

    # -- model helpers -------------------------------------------------------

    def _srv(self) -> ProxyServer:
        assert self.srv is not None, "no server (initialize did not run)"
        return self.srv

    def _mode_note(self) -> str:
        return "" if not self.fd_passing else (", auto dispatch" if self.auto else ", dispatch")

    def _pending(self) -> list[Client]:
        return [c for c in self.clients if c.state == PENDING]

    def _held_on(self, worker: int) -> int:
        return sum(1 for c in self.clients if c.state == HELD and c.worker == worker)

    def _free_workers(self) -> int:
        busy = sum(1 for c in self.clients if c.state == HELD and c.worker in self.alive)
        return len(self.alive) - busy - len(self._pending())

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
        for c in self.clients:
            c.pump()
        self._collect()
        number = next(self._numbers)
        try:
            sock = srv.connect(timeout=self.client_timeout)
        except OSError as exc:
            self._violate(INV_CLIENT, f"client {number}: connect failed while serving: {exc}")
        payload = (HOLD if kind == HOLDING else b"ping") + f" c{number}".encode()
        local = sock.getsockname()
        client = Client(
            number, kind, sock, payload, (local[0], local[1]), self.kills, self._excuse_now()
        )
        self.every_client.append(client)
        self.clients.append(client)
        self._note(client.name)
        try:
            sock.sendall(payload)
        except OSError as exc:
            client._finish(f"reset on send ({exc})")
        sock.setblocking(False)
        return client

    def _wait(self, done: Callable[[], bool], timeout: float) -> bool:
        """Pump every open client until ``done()`` or the deadline; True if done."""
        deadline = time.monotonic() + timeout
        while True:
            for c in self.clients:
                c.pump()
            if done():
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            poller = select.poll()
            for c in self.clients:
                if c.state in (PENDING, HELD):
                    poller.register(c.sock.fileno(), select.POLLIN)
            poller.poll(max(1, int(min(remaining, 0.05) * 1000)))

    def _await(self, client: Client) -> None:
        """Give a new client its answer (or its end); judge how it ended."""
        if client.dispatch_error is not None:
            # dispatch gave up on it: the connection must end, not hang (FLT-01, FP-09)
            if not self._wait(lambda: client.state != PENDING, self.client_timeout):
                self._violate(
                    INV_CLIENT,
                    f"{client.name}: dispatch raised {client.dispatch_error}, but the client "
                    f"saw no EOF or reset within {self.client_timeout}s (left hanging)"
                    f"{self._master_fd_hint()}",
                )
        else:
            others_busy = any(c.state in (PENDING, HELD) for c in self.clients if c is not client)
            if not others_busy:
                wait = self.client_timeout
            elif self._free_workers() > 0:
                wait = self.busy_window
            else:
                wait = 0.02
            if not self._wait(lambda: client.state != PENDING, wait) and not others_busy:
                self._violate(INV_CLIENT, self._hung(client))
        self._collect()
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

    def _master_fd_hint(self) -> str:
        srv = self.srv
        if srv is None or srv.master_pid is None or not self.master_base:
            return ""
        try:
            now = fd_count(srv.master_pid)
        except ProcessLookupError:
            return "; the master is gone"
        if now == len(self.master_base):
            return ""
        return f"; the master holds {now} fds, {len(self.master_base)} at the baseline"

    def _collect(self) -> None:
        """Judge clients that were answered or ended since the last look."""
        for c in list(self.clients):
            if c.state in (HELD, DONE) and c.answered and not c.checked:
                c.checked = True
                self._check_answer(c)
                if c.worker is not None:
                    self.last_used[c.worker] = next(self._uses)
            if c.state in (PENDING, HELD):
                continue
            self.clients.remove(c)
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
            if not c.answered:
                why = c.excuse or (
                    "a worker was killed since" if self.kills > c.kills_before else ""
                )
                if not why:
                    self._violate(
                        INV_LOST,
                        f"{c.name} ended ({c.end}) without an answer although worker(s) "
                        f"{sorted(self.alive)} were alive and free, none was killed since, and "
                        "no fault was injected: the connection was lost (FP-08)",
                    )

    def _check_answer(self, c: Client) -> None:
        reply = c.reply
        if reply is None:
            self._violate(INV_MATCH, f"{c.name}: the answer is not a worker's reply: {c.garbled}")
        problems = []
        if reply.data != c.payload.decode():
            problems.append(f"it answers request {reply.data!r}, not {c.payload.decode()!r}")
        if reply.peer != c.local:
            problems.append(f"the worker's peer is {reply.peer}, the client is {c.local}")
        if reply.index is None or not 0 <= reply.index < len(self.pids):
            problems.append(f"worker index {reply.index!r} is not one of this server's")
        elif reply.pid != self.pids[reply.index]:
            problems.append(
                f"pid {reply.pid} is not worker {reply.index}'s ({self.pids[reply.index]})"
            )
        if c.dispatched_to is not None and reply.index != c.dispatched_to:
            problems.append(f"dispatch() returned worker {c.dispatched_to} (FP-04)")
        if problems:
            self._violate(
                INV_MATCH, f"{c.name} answered by worker {reply.index}: " + "; ".join(problems)
            )

    # -- dispatch and faults -------------------------------------------------

    def _master(self, what: str, op: Callable[[], T]) -> T:
        """A control request to the master; a hang or a death breaks master-alive."""
        try:
            return op()
        except HarnessError as exc:
            self._violate(INV_MASTER, f"{what}: {_first_line(exc)}")

    def _master_status(self) -> None:
        srv = self._srv()
        exited = cast(dict[int, int], self._master("exited", lambda: srv.request("exited")))
        gone = {p: s for p, s in exited.items() if p in self.pids and p not in self.killed_pids}
        if gone:
            srv.events.drain()
            crashes = [e for e in srv.events.events if e.kind == "crash" and e.pid in gone]
            detail = "; ".join(
                f"worker pid {e.pid}: {e.detail.get('type')}: {e.detail.get('message')}"
                for e in crashes
            )
            statuses = ", ".join(f"pid {p}: {_status(s)}" for p, s in sorted(gone.items()))
            self._violate(
                INV_WORKERS,
                f"worker(s) exited without being killed ({statuses})"
                + (f"; {detail}" if detail else ""),
            )

    def _dispatch_raw(self, timeout: float) -> int | Exception:
        srv = self._srv()
        try:
            return srv.dispatch(timeout=timeout)
        except HarnessError as exc:
            self._violate(INV_MASTER, f"dispatch: {_first_line(exc)}")
        except Exception as exc:
            return exc

    def _expect_dispatch(
        self, client: Client, outcome: int | Exception, allowed: str | None
    ) -> None:
        if isinstance(outcome, int):
            if outcome not in self.alive:
                self._violate(
                    INV_DISPATCH,
                    f"dispatch() of {client.name} returned {outcome!r}, not a live worker "
                    f"(live: {sorted(self.alive)}; FP-04, FP-08)",
                )
            client.dispatched_to = outcome
            self._note(f"dispatched to worker {outcome}")
            return
        if not isinstance(outcome, OSError):
            self._violate(
                INV_DISPATCH,
                f"dispatch() of {client.name} raised {_describe_exc(outcome)}, not an OSError",
            )
        why = allowed or client.excuse
        if why is None:
            self._violate(
                INV_DISPATCH,
                f"dispatch() of {client.name} raised {_describe_exc(outcome)} although "
                f"worker(s) {sorted(self.alive)} were alive and free and no fault was injected "
                "(FP-08)",
            )
        client.dispatch_error = _describe_exc(outcome)
        client.excuse = client.excuse or why
        self._note(f"dispatch raised {client.dispatch_error}")

    def _dispatch_if_manual(self, client: Client) -> None:
        if self.fd_passing and not self.auto:  # even if the send failed: it is in the backlog
            self._expect_dispatch(client, self._dispatch_raw(self.client_timeout), None)

    def _inject_sendmsg(self, client: Client, error: str) -> None:
        srv = self._srv()
        request = type(self).pytest_request
        assert request is not None, "run_stateful() sets the pytest request"
        try:
            with injected(srv, request, "sendmsg", error, times=1) as layer:
                outcome = self._dispatch_raw(self.client_timeout)
        except HarnessError as exc:  # strace or the master gave up while un-injecting
            if isinstance(exc.__context__, InvariantViolation):
                raise exc.__context__ from None
            self._violate(INV_MASTER, f"injecting sendmsg {error}: {_first_line(exc)}")
        self._note(f"{layer} layer")
        if error == "EPIPE":  # a live worker "is dead" for the master from now on
            self.written_off += 1
        self._expect_dispatch(client, outcome, f"sendmsg failed with the injected {error}")

    def _inject_emfile(self, client: Client) -> None:
        srv = self._srv()
        assert srv.master_pid is not None
        top = max(fd_table(srv.master_pid))
        soft, _hard = self._master("rlimit", lambda: srv.set_nofile("master", top + 1 + 16))
        self._master("fill", lambda: srv.request("fill", 0))
        first = self._dispatch_raw(self.client_timeout)
        self._master("unfill", lambda: srv.request("unfill"))
        self._master("rlimit", lambda: srv.set_nofile("master", soft))
        if isinstance(first, int) or not isinstance(first, OSError):
            self._expect_dispatch(client, first, None)
            return
        self._note(f"dispatch with a full fd table raised {_describe_exc(first)}")
        # FLT-02: with fds free again, dispatch works: the client is still in the
        # backlog, or the implementation closed it (then nothing is waiting).
        second = self._dispatch_raw(self.busy_window)
        if isinstance(second, TimeoutError):
            self._expect_dispatch(client, first, "accept() met a full fd table (EMFILE)")
        else:
            self._expect_dispatch(client, second, None)

    # -- checks --------------------------------------------------------------

    def _resolve_pending(self) -> None:
        """Once no client is held, no worker is busy: every pending client must end."""
        deadline = time.monotonic() + self.client_timeout
        while True:
            self._wait(lambda: True, 0)
            self._collect()
            pending = self._pending()
            if not pending or any(c.state == HELD for c in self.clients):
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._violate(INV_CLIENT, self._hung(pending[0]))
            self._wait(_any_settled(pending), remaining)

    def _check_held_open(self) -> None:
        self._wait(lambda: True, 0)
        self._collect()

    def _check_master_fds(self) -> None:
        srv = self._srv()
        pid = srv.master_pid
        assert pid is not None
        base = len(self.master_base)
        if _settles(lambda: fd_count(pid) == base, self.settle_timeout):
            return
        now = fd_table(pid)
        new = [fd for fd, target in now.items() if self.master_base.get(fd) != target]
        gone = [fd for fd, target in self.master_base.items() if now.get(fd) != target]
        described = {f.fd: f.describe(pid) for f in fd_inventory(pid) if f.fd in new}
        self._violate(
            INV_MASTER_FDS,
            f"the master (pid {pid}) holds {len(now)} fds, {base} at the baseline"
            + (f"; new: {'; '.join(described.get(fd, str(fd)) for fd in new)}" if new else "")
            + (
                "; gone: " + "; ".join(f"fd {fd} ({self.master_base[fd]})" for fd in gone)
                if gone
                else ""
            ),
        )

    def _check_worker_fds(self, workers: list[int], when: str) -> None:
        expected = {i: self.worker_base[i] + self._held_on(i) for i in workers}

        def counts() -> dict[int, int]:
            return {i: _fd_count_or(self.pids[i], expected[i]) for i in workers}

        if _settles(lambda: counts() == expected, self.settle_timeout):
            return
        now = counts()
        wrong = [
            f"worker {i} (pid {self.pids[i]}): {now[i]} fds, expected {expected[i]} "
            f"(baseline {self.worker_base[i]} + {self._held_on(i)} held)"
            for i in workers
            if now[i] != expected[i]
        ]
        self._violate(INV_WORKER_FDS, f"{when}: " + "; ".join(wrong))

    def _check_teardown(self, srv: ProxyServer) -> None:
        report = srv.shutdown()
        problems: list[str] = []
        if report.processes_left:
            problems.append(
                f"processes still running after the master exited: {report.processes_left}"
            )
        if report.ipc_left:
            problems.append(
                "IPC objects left after the master's close(): "
                + ", ".join(o.describe() for o in report.ipc_left)
            )
        srv.events.drain()
        for e in srv.events.events:
            if e.kind == "close-error":
                problems.append(f"close() raised {e.detail.get('type')}: {e.detail.get('message')}")
        status = report.master_status
        if status is not None and (os.WIFSIGNALED(status) or os.WEXITSTATUS(status) != 0):
            problems.append(f"the master ended with {_status(status)}")
        if self.fd_passing:  # a shared listener gives workers nothing to notice the close by
            for pid, wstatus in sorted(report.worker_statuses.items()):
                if pid in self.pids and pid not in self.killed_pids and os.WIFSIGNALED(wstatus):
                    problems.append(
                        f"worker pid {pid} did not leave after the master's close() "
                        f"(it had to be {_status(wstatus)}; FP-11)"
                    )
        if problems:
            self._violate(INV_TEARDOWN, "; ".join(problems))
        self._note("nothing left")

    def _ipc(self) -> set[tuple[str, int]]:
        return {(o.kind, o.id) for o in self._srv().ipc_objects()}


def fd_table(pid: int) -> dict[int, str]:
    """fd -> what it refers to (``socket:[123]``...), cheaply: no socket tables are read."""
    if not sys.platform.startswith("linux"):
        return {f.fd: f.target for f in fd_inventory(pid)}
    base = f"/proc/{pid}/fd"
    try:
        names = os.listdir(base)
    except FileNotFoundError:
        raise ProcessLookupError(f"no process with pid {pid}") from None
    table: dict[int, str] = {}
    for name in names:
        with contextlib.suppress(FileNotFoundError):  # closed meanwhile
            table[int(name)] = os.readlink(f"{base}/{name}")
    return table


def _answer_index(sock: socket.socket, timeout: float) -> int | None:
    """The worker index in a hold answer read within ``timeout``; None without one."""
    deadline = time.monotonic() + timeout
    data = b""
    try:
        while b"\n" not in data:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            sock.settimeout(remaining)
            chunk = sock.recv(4096)
            if not chunk:
                return None
            data += chunk
        return Reply.parse(data, "open").index
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None


def _fds_below(pid: int, count: int) -> Callable[[], bool]:
    return lambda: _fd_count_or(pid, 0) < count


def _all_blocked(pids: list[int]) -> Callable[[], bool]:
    """True once every process in ``pids`` is asleep (blocked in a system call), twice."""

    def asleep() -> bool:
        try:
            return all(psutil.Process(p).status() == psutil.STATUS_SLEEPING for p in pids)
        except psutil.NoSuchProcess:
            return True  # the workers-alive check reports it

    def twice() -> bool:
        if not asleep():
            return False
        time.sleep(0.001)
        return asleep()

    return twice


def _any_settled(clients: list[Client]) -> Callable[[], bool]:
    return lambda: any(c.state != PENDING for c in clients)


def _status(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit {os.WEXITSTATUS(status)}"


def _fd_count_or(pid: int, default: int) -> int:
    try:
        return fd_count(pid)
    except ProcessLookupError:
        return default  # the workers-alive check reports a worker that vanished


def _settles(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


# -- running it ----------------------------------------------------------------


@dataclass
class StatefulRun:
    """What ``run_stateful`` did: the profile, the seed, and the machine of the last example."""

    profile: str
    seed: Any
    machine: ProxyMachine | None = None


def run_stateful(
    factory: Callable[[], object],
    request: pytest.FixtureRequest,
    *,
    machine: type[ProxyMachine] = ProxyMachine,
    profile: str | None = None,
    seed_value: Any = None,
) -> StatefulRun:
    """Run the FLT-05 state machine against ``factory``; raise its failure, if any.

    ``profile`` defaults to ``--fdpass-hypothesis-profile``; the seed to
    ``--hypothesis-seed``, else a fixed one for derandomized profiles, else a
    fresh one. Both are recorded in the test's ``user_properties``
    (``fdpass_hypothesis``); on failure so are the shrunk steps
    (``fdpass_steps``) and the broken invariant (``fdpass_invariant``).

    The failure raised is the ``InvariantViolation`` of the shrunk example.
    If that example did not fail again when Hypothesis replayed it (the bug
    depends on timing), the shortest failing example seen is reported instead,
    with a note saying so.
    """
    name = profile or str(request.config.getoption("fdpass_hypothesis_profile", "default"))
    real, chosen = resolve_profile(name)
    if seed_value is None:
        seed_value = request.config.getoption("hypothesis_seed", None)
    if seed_value is None:
        seed_value = FIXED_SEED if chosen.derandomize else random.getrandbits(32)
    bound = cast(
        type[ProxyMachine],
        type(machine.__name__, (machine,), {"impl_factory": staticmethod(factory)}),
    )
    bound.impl_fd_passing = _fd_passing_impl(factory)
    bound.pytest_request = request
    bound.failures = []
    seed(seed_value)(bound)
    run = StatefulRun(real, seed_value)
    props = request.node.user_properties
    props.append(("fdpass_hypothesis", f"profile={real} seed={seed_value}"))
    replay = f"--fdpass-hypothesis-profile={name} --hypothesis-seed={seed_value}"
    try:
        run_state_machine_as_test(bound, settings=chosen)
    except InvariantViolation as exc:
        last = bound.last
        steps = last.steps if last is not None and last.violation is exc else _steps_of(bound, exc)
        _report(props, exc, steps, f"FLT-05 shrunk steps (profile {real}; replay with {replay})")
        raise
    except Exception as exc:
        if not bound.failures:
            raise
        # Hypothesis could not replay the failure reliably: report the shortest one seen.
        steps, violation = min(bound.failures, key=lambda f: len(f[0]))
        _report(
            props,
            violation,
            steps,
            f"FLT-05 steps of the shortest failing run (profile {real}; replay with {replay}); "
            f"it did not fail on every replay, so it depends on timing "
            f"(Hypothesis: {_first_line(exc)})",
        )
        raise violation from exc
    finally:
        last = bound.last
        if last is not None:
            last.close_all()  # a safety net: teardown closes it, unless it never ran
        run.machine = last
        _dedupe(props, "fdpass_fault_layer")
    return run


def _fd_passing_impl(factory: Callable[[], object]) -> bool:
    probe = factory()
    try:
        return is_fd_passing(probe)
    finally:
        close = getattr(probe, "close", None)
        if callable(close):
            close()


def _steps_of(bound: type[ProxyMachine], exc: InvariantViolation) -> list[str]:
    return next((steps for steps, v in bound.failures if v is exc), [])


def _report(
    props: list[tuple[str, object]], exc: InvariantViolation, steps: list[str], title: str
) -> None:
    text = "\n".join(steps)
    props.append(("fdpass_steps", text))
    props.append(("fdpass_invariant", exc.invariant))
    note = f"{title}:\n{text}"
    if hasattr(exc, "add_note"):  # Python 3.11+
        exc.add_note(note)
    else:  # Python 3.10: PEP 678's attribute itself, as Hypothesis and pytest use it there
        exc.__notes__ = [*getattr(exc, "__notes__", []), note]  # type: ignore[attr-defined]


def _dedupe(props: list[tuple[str, object]], key: str) -> None:
    seen: set[object] = set()
    kept: list[tuple[str, object]] = []
    for name, value in props:
        if name == key:
            if value in seen:
                continue
            seen.add(value)
        kept.append((name, value))
    props[:] = kept
