"""FLT-05's state machine: the events of a proxy's life as rules, the invariants after each.

Preconditions are functions of the rules run so far, never of timing:
Hypothesis replays a choice sequence to shrink a failure, and if a
precondition depended on how the server happened to behave (a client answered
yet or not), a replay could offer other rules and the run would be reported
as flaky.
"""

from __future__ import annotations

import contextlib
import time
from typing import ClassVar, cast

from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    precondition,
    rule,
)

from ...harness.server import HarnessError, ProxyServer, ServerOptions
from ...leaks.fds import fd_count, fd_inventory, fd_links
from ...processes import describe_status, has_ended
from ..evidence import hidden_errno, wait_until
from ..faultctl import counted_fault
from ..steps import sigpipe_default
from .clients import HELD, HOLDING, PLAIN, Client, any_ended
from .invariants import (
    INV_CLIENT,
    INV_DISPATCH,
    INV_IPC,
    INV_MASTER,
    INV_MASTER_FDS,
    INV_TEARDOWN,
    INV_WORKER_FDS,
    INV_WORKERS,
    InvariantViolation,
    describe_exc,
    first_line,
    left_after_close,
)
from .model import ProxyModel, fd_count_or

#: Which worker ``kill_worker`` kills: "next", the idle worker that served least
#: recently (the one a FIFO of idle workers, or round-robin, hands the next
#: connection to); "recent", the idle one that served last; "busy", the one
#: holding the oldest held client (else as "next"). Chosen from what the test saw,
#: not drawn as an index, so that a shrunk run kills the worker that matters.
VICTIMS = ("next", "busy", "recent")

#: Faults the ``inject`` rule draws from: ``call:ERRNO``.
FAULTS = ("sendmsg:EPIPE", "sendmsg:ENOBUFS", "sendmsg:ETOOMANYREFS", "accept:EMFILE")


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


class ProxyMachine(ProxyModel, RuleBasedStateMachine):
    """The FLT-05 state machine; ``run_stateful`` binds it to an implementation."""

    holds: ClassVar[Bundle[Client]] = Bundle("holds")
    #: The machine of the latest example; after a failure, that of the shrunk one.
    last: ClassVar[ProxyMachine | None] = None

    def __init__(self) -> None:
        super().__init__()
        type(self).last = self

    # -- rules: the events of a proxy's life ---------------------------------

    @initialize(count=st.integers(1, 3), auto=st.booleans())
    def start(self, count: int, auto: bool) -> None:
        """Start a server with ``count`` workers; ``auto`` picks the dispatch mode (fd passing)."""
        self.started = True
        self.workers_left = count
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
            self._violate(INV_MASTER, f"the server did not start: {first_line(exc)}")
        self.fd_passing = srv.fd_passing
        self.auto = auto or not self.fd_passing
        mode = (
            ("auto" if auto else "manual") + " dispatch" if self.fd_passing else "shared listener"
        )
        self._step(f"start {count} worker(s), {mode}")
        self.pids = list(srv.worker_pids)
        self.alive = set(range(count))
        self._warm_up(count)
        self.workers_alive()  # the master finished its last dispatch: it is quiet
        assert srv.master_pid is not None
        self.master_base = fd_links(srv.master_pid)
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
        """A client sends one request; a worker answers it and closes (SP-09, SP-11)."""
        self._step(f"request{self._mode_note()}")
        client = self._new_client(PLAIN)
        self._dispatch_if_manual(client)
        self._await(client)

    @precondition(_can_hold)
    @rule(target=holds)
    def hold(self) -> Client:
        """A client sends b"hold": its worker answers and keeps the connection open."""
        self.open_holds += 1
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
        self.clients.wait(lambda: client.state != HELD, 0.02)
        self.judge_clients()
        self._note(f"still open, worker {client.worker}")

    @precondition(_serving)
    @rule(client=consumes(holds))
    def close_client(self, client: Client) -> None:
        """Close a held client from the client's side; its worker must release the fd (SP-16)."""
        self.open_holds -= 1
        self._step(f"close {client.name}")
        client.pump()
        was_held, worker = client.state == HELD, client.worker
        self._note(f"it was {client.state}")
        client.close()
        self.judge_clients()
        if was_held and worker is not None and worker in self.alive and not self.clients.pending():
            self.worker_fds_flat([worker], f"after {client.name} was closed")

    @precondition(_can_kill)
    @rule(which=st.sampled_from(VICTIMS))
    def kill_worker(self, which: str) -> None:
        """SIGKILL a worker (see ``VICTIMS``); the clients it held see EOF or a reset (FP-08)."""
        self.workers_left -= 1
        srv = self._srv()
        worker = self._victim(which)
        pid = self.pids[worker]
        self._step(f"kill_worker {worker} ({which}; pid {pid}) with SIGKILL")
        srv.kill_worker(worker)
        self.alive.discard(worker)
        self.killed_pids.add(pid)
        self.kills += 1
        victims = [c for c in self.clients.held() if c.worker == worker]
        if victims and not self.clients.wait(
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
        self.judge_clients()

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
        """One request whose dispatch meets a fault: a failing sendmsg (FLT-01), or a full fd
        table (FLT-02)."""
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
    def every_invariant_holds(self) -> None:
        """Every invariant of ``INVARIANTS`` but the teardown one, in this order: a dead
        worker or master explains what follows, so it is named first."""
        if self.srv is None:
            return
        self.srv.events.drain()  # keep the event pipe from filling; crash reports stay readable
        self.workers_alive()
        self.clients_served_or_closed()
        self.master_fds_flat()
        if not self.clients.pending():  # a pending request may be in a worker's hands now
            self.worker_fds_flat(sorted(self.alive), "after the step")
        self.ipc_objects_constant()

    def workers_alive(self) -> None:
        """workers-alive (and master-alive: the master answers)."""
        srv = self._srv()
        gone = self._ended_workers()
        srv.events.drain()
        crashes = {
            self.pids[e.index]: e
            for e in srv.events.events
            if e.kind == "crash" and e.role == "worker" and 0 <= e.index < len(self.pids)
        }
        for pid, status in sorted(gone.items()):
            if self.written_off and status == 0 and pid not in crashes:
                self._released(pid)
                del gone[pid]
        if gone:
            detail = "; ".join(
                f"worker pid {pid}: {e.detail.get('type')}: {e.detail.get('message')}"
                for pid, e in sorted(crashes.items())
                if pid in gone
            )
            statuses = ", ".join(
                f"pid {p}: {'status unknown' if s is None else describe_status(s)}"
                for p, s in sorted(gone.items())
            )
            self._violate(
                INV_WORKERS,
                f"worker(s) exited without being killed ({statuses})"
                + (f"; {detail}" if detail else ""),
            )

    def _ended_workers(self) -> dict[int, int | None]:
        """pid -> wait status of each worker that ended without being killed (None: not
        known yet). A program's worker (exec adapter) ends a moment before the harness
        worker that drives it, whose status stands for it: seen ended, it is waited for."""
        srv = self._srv()

        def reaped() -> dict[int, int]:
            exited = cast(dict[int, int], self._master("exited", lambda: srv.request("exited")))
            return {p: s for p, s in exited.items() if p in self.pids and p not in self.killed_pids}

        statuses = reaped()
        ended = [self.pids[i] for i in sorted(self.alive) if has_ended(self.pids[i])]
        if any(pid not in statuses for pid in ended):
            wait_until(lambda: all(pid in reaped() for pid in ended), self.settle_timeout)
            statuses = reaped()
        return {**dict.fromkeys(ended), **statuses}

    def _released(self, pid: int) -> None:
        """A worker left cleanly after the master was told (by an injected EPIPE) that
        it was dead: a master may close that worker's channel end, and the worker
        then leaves on EOF, as it should. It is gone from now on, as if killed."""
        worker = self.pids.index(pid)
        self._note(f"worker {worker} (pid {pid}) left on its own: the master released it")
        self.written_off -= 1
        self.workers_left -= 1
        self.alive.discard(worker)
        self.killed_pids.add(pid)

    def clients_served_or_closed(self) -> None:
        """clients-served-or-closed: once no client is held, no worker is busy, so every
        pending client ends; then the ended ones are judged (:meth:`_judge_clients`)."""
        deadline = time.monotonic() + self.client_timeout
        while True:
            self.clients.wait(lambda: True, 0)
            self.judge_clients()
            pending = self.clients.pending()
            if not pending or self.clients.held():
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._violate(INV_CLIENT, self._hung(pending[0]))
            self.clients.wait(any_ended(pending), remaining)

    def master_fds_flat(self) -> None:
        """The master holds no fd it did not hold at the baseline. Fewer is allowed:
        a master may release what it kept for a worker that died (its channel end),
        and a released fd is no leak; a master that released something it needs
        fails the client invariants instead."""
        srv = self._srv()
        pid = srv.master_pid
        assert pid is not None
        base = self.master_base

        def new_fds() -> list[int]:
            return [fd for fd, target in fd_links(pid).items() if base.get(fd) != target]

        if wait_until(lambda: not new_fds(), self.settle_timeout):
            return
        new = new_fds()
        described = {f.fd: f.describe(pid) for f in fd_inventory(pid) if f.fd in new}
        self._violate(
            INV_MASTER_FDS,
            f"the master (pid {pid}) holds {len(new)} fd(s) it did not hold at the baseline "
            f"({len(base)} fds then): {'; '.join(described.get(fd, f'fd {fd}') for fd in new)}",
        )

    def worker_fds_flat(self, workers: list[int], when: str) -> None:
        expected = {i: self.worker_base[i] + self.clients.held_on(i) for i in workers}

        def counts() -> dict[int, int]:
            return {i: fd_count_or(self.pids[i], expected[i]) for i in workers}

        if wait_until(lambda: counts() == expected, self.settle_timeout):
            return
        now = counts()
        wrong = [
            f"worker {i} (pid {self.pids[i]}): {now[i]} fds, expected {expected[i]} "
            f"(baseline {self.worker_base[i]} + {self.clients.held_on(i)} held)"
            for i in workers
            if now[i] != expected[i]
        ]
        self._violate(INV_WORKER_FDS, f"{when}: " + "; ".join(wrong))

    def ipc_objects_constant(self) -> None:
        ipc = self._ipc()
        if ipc != self.ipc_base:
            self._violate(
                INV_IPC,
                f"IPC objects changed while serving: {sorted(self.ipc_base)} at the baseline, "
                f"now {sorted(ipc)} (kind, id)",
            )

    def dispatch_outcome(
        self,
        client: Client,
        outcome: int | Exception,
        allowed: str | None,
        injected: tuple[str, float, float] | None = None,
    ) -> None:
        """dispatch-outcome; ``injected`` is (errno, seconds dispatch took, its timeout) of the
        fault that ``allowed`` names, whose errno a raised error must carry (FLT-01's rule)."""
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
                f"dispatch() of {client.name} raised {describe_exc(outcome)}, not an OSError",
            )
        why = allowed or client.excuse
        if why is None:
            self._violate(
                INV_DISPATCH,
                f"dispatch() of {client.name} raised {describe_exc(outcome)} although "
                f"worker(s) {sorted(self.alive)} were alive and free and no fault was injected "
                "(FP-08)",
            )
        if injected is not None and client.excuse is None:
            hidden = hidden_errno(outcome, *injected)
            if hidden:
                self._violate(INV_DISPATCH, f"{client.name}, {allowed}: {hidden} (FLT-01)")
        client.dispatch_error = describe_exc(outcome)
        client.excuse = client.excuse or why
        self._note(f"dispatch raised {client.dispatch_error}")

    def teardown(self) -> None:
        """nothing-left-after-close: close the proxy in the master, check that nothing is left."""
        srv = self.srv
        try:
            if srv is not None and self.violation is None:
                self.clients.close_all()
                self._step("teardown: close the proxy in the master, reap every process")
                report = srv.shutdown()
                srv.events.drain()
                close_errors = [
                    f"close() raised {e.detail.get('type')}: {e.detail.get('message')}"
                    for e in srv.events.events
                    if e.kind == "close-error"
                ]
                problems = left_after_close(
                    report, close_errors, self.pids, self.killed_pids, self.fd_passing
                )
                if problems:
                    self._violate(INV_TEARDOWN, "; ".join(problems))
                self._note("nothing left")
        finally:
            self.close_all()

    def close_all(self) -> None:
        """Close every client and the server, without checking anything; idempotent."""
        srv, self.srv = self.srv, None
        self.clients.close_all()
        if srv is not None:
            srv.close()

    def _dispatch_if_manual(self, client: Client) -> None:
        if self.fd_passing and not self.auto:  # even if the send failed: it is in the backlog
            self.dispatch_outcome(client, self._dispatch_raw(self.client_timeout), None)

    def _inject_sendmsg(self, client: Client, error: str) -> None:
        srv = self._srv()
        request = type(self).pytest_request
        assert request is not None, "run_stateful() sets the pytest request"
        try:
            with counted_fault(srv, request, "sendmsg", error, times=1) as fault:
                outcome, took = self._timed_dispatch(self.client_timeout)
        except HarnessError as exc:  # strace or the master gave up while un-injecting
            if isinstance(exc.__context__, InvariantViolation):
                raise exc.__context__ from None
            self._violate(INV_MASTER, f"injecting sendmsg {error}: {first_line(exc)}")
        self._note(f"{fault.layer} layer")
        if error == "EPIPE":  # a live worker "is dead" for the master from now on
            self.written_off += 1
        self.dispatch_outcome(
            client,
            outcome,
            f"sendmsg failed with the injected {error}",
            (error, took, self.client_timeout),
        )

    def _inject_emfile(self, client: Client) -> None:
        srv = self._srv()
        assert srv.master_pid is not None
        top = max(fd_links(srv.master_pid))
        soft, _hard = self._master("rlimit", lambda: srv.set_nofile("master", top + 1 + 16))
        self._master("fill", lambda: srv.request("fill", 0))
        first, took = self._timed_dispatch(self.client_timeout)
        self._master("unfill", lambda: srv.request("unfill"))
        self._master("rlimit", lambda: srv.set_nofile("master", soft))
        if isinstance(first, int) or not isinstance(first, OSError):
            self.dispatch_outcome(client, first, None)
            return
        self._note(f"dispatch with a full fd table raised {describe_exc(first)}")
        # FLT-02: with fds free again, dispatch works: the client is still in the
        # backlog, or the implementation closed it (then nothing is waiting).
        second = self._dispatch_raw(self.busy_window)
        if isinstance(second, TimeoutError):
            self.dispatch_outcome(
                client,
                first,
                "accept() met a full fd table (EMFILE)",
                ("EMFILE", took, self.client_timeout),
            )
        else:
            self.dispatch_outcome(client, second, None)
