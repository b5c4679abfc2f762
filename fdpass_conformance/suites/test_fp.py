"""FP: what an fd-passing proxy must do on top of SP (n/a for shared-listener proxies)."""

from __future__ import annotations

import signal
import time

import pytest

from ..harness.master_role import LISTENER
from ..harness.server import ProxyServer, Reply, read_reply
from ..outcomes import blocked
from .applicability import require_served, served, served_owner
from .base import StartServer, SuiteBase, needs
from .evidence import (
    assert_fd_counts_flat,
    describe_reply,
    fd_counts,
    outcome_of,
    unix_sockets,
    wait_in_accept,
)

#: Exceptions that say "wrong call order" clearly; anything else looks like an internal bug.
CLEAR_ERRORS = (RuntimeError, OSError, ValueError)


def _sigpipe_default() -> None:
    """Like a C or PHP master: SIGPIPE kills unless every send uses MSG_NOSIGNAL."""
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)


def _manual(srv: ProxyServer) -> ProxyServer:
    srv.set_auto(False)
    return srv


def _dispatch_one(srv: ProxyServer, payload: bytes = b"manual") -> tuple[int, Reply]:
    """Connect a client, dispatch it by hand, and return (index, the worker's reply)."""
    with srv.connect() as client:
        client.sendall(payload)
        index = srv.dispatch(timeout=5.0)
        return index, read_reply(client, b"", timeout=5.0)


class FdPassingSuite(SuiteBase):
    @pytest.mark.requirement("FP-01")
    def test_fd_passing_methods_present(self, server: StartServer) -> None:
        shape = server(upto="constructed").request("inspect")
        assert shape["missing"] == [], f"missing: {', '.join(shape['missing'])}"

    @pytest.mark.requirement("FP-02")
    @needs("served")  # FP-02 owns it: the check runs, and says what the clients saw
    def test_worker_gets_the_accepted_connection(self, server: StartServer) -> None:
        srv = server(workers=2)
        for n in range(4):
            with srv.connect() as client:
                reply = read_reply(client, b"fp02", timeout=5.0)
                crash = srv.crash_report(traceback=False)
                assert reply.answered, (
                    f"connection {n} {describe_reply(reply, 5.0)}: no connection the master "
                    "accepted reached a worker" + (f" ({crash})" if crash else "")
                )
                assert reply.peer == client.getsockname()[:2], "worker's peer is not the client"
                assert reply.local == client.getpeername()[:2], "worker's local end differs"

    @pytest.mark.requirement("FP-03")
    def test_master_keeps_no_fd_of_the_connection(self, server: StartServer) -> None:
        srv = _manual(server(workers=2))
        with srv.connect() as client:
            client.sendall(b"fp03")
            outcome = outcome_of(lambda: srv.dispatch(timeout=5.0))
            if not isinstance(outcome, int):  # nothing was dispatched: FP-02 says why
                blocked(served_owner(True), f"dispatch of a waiting client gave {outcome!r}")
            held = [f for f in srv.fds("master") if f.kind == "tcp"]
            assert not held, "after dispatch the master still holds " + "; ".join(
                f.describe(srv.master_pid or 0) for f in held
            )
            reply = read_reply(client, b"", timeout=5.0)
            require_served(srv, reply, "the dispatched connection (no fd kept in the master)")

    @pytest.mark.requirement("FP-04")
    @needs("served")
    def test_dispatch_returns_the_receiving_worker(self, server: StartServer) -> None:
        srv = _manual(server(workers=3))
        for n in range(6):
            index, reply = _dispatch_one(srv, f"fp04-{n}".encode())
            require_served(srv, reply, f"dispatched connection {n}")
            assert reply.index == index, (
                f"dispatch returned {index}, but worker {reply.index} served it"
            )

    @pytest.mark.requirement("FP-05")
    @needs("served")
    def test_received_sockets_are_cloexec(self, server: StartServer) -> None:
        srv = server(workers=2)
        for n in range(4):
            reply = served(srv, f"connection {n}")
            assert reply.cloexec is True, "the worker received an inheritable socket"

    @pytest.mark.requirement("FP-06")
    @needs("served")
    def test_channel_ends_are_split(self, server: StartServer) -> None:
        srv = server(upto="constructed", workers=3)
        assert srv.master_pid is not None
        inherited = unix_sockets(srv.master_pid)  # the harness's own, before the proxy acts
        srv.create_socket()
        srv.call("open_channels", 3)
        srv.fork_workers()
        for n in range(3):  # the first dispatch is when the master drops the worker ends
            served(srv, f"connection {n}")
        master = unix_sockets(srv.master_pid) - inherited
        workers = [unix_sockets(pid) - inherited for pid in srv.worker_pids]
        for i, ends in enumerate(workers):
            shared = ends & master
            assert not shared, f"worker {i} and the master share channel sockets {sorted(shared)}"
            for j in range(i + 1, len(workers)):
                both = ends & workers[j]
                assert not both, f"workers {i} and {j} share channel sockets {sorted(both)}"

    @pytest.mark.requirement("FP-07")
    @needs("served")
    def test_worker_exit_or_death_leaves_ipc_and_others(self, server: StartServer) -> None:
        srv = server(workers=3)
        before = srv.ipc_objects()
        srv.kill_worker(0)
        exit_reply = srv.request_reply(b"exit")
        assert exit_reply.answered, (
            f"after worker 0 was killed, a request to a live worker {describe_reply(exit_reply, 5)}"
        )
        srv.wait_events("exit", 1)
        assert srv.ipc_objects() == before, "a worker's death or exit changed the IPC objects"
        for n in range(4):
            reply = srv.request_reply(timeout=5.0)
            assert reply.answered, (
                f"request {n} after one worker died and one exited {describe_reply(reply, 5)}"
            )

    @pytest.mark.requirement("FP-08")
    @needs("served")
    def test_dead_worker_costs_nothing(self, server: StartServer) -> None:
        srv = server(workers=2, master_setup=_sigpipe_default)
        srv.kill_worker(0)
        for n in range(6):
            reply = srv.request_reply(timeout=5.0)
            assert reply.answered, f"request {n} after worker 0 died {describe_reply(reply, 5)}"
            assert reply.index == 1, f"request {n} was served by worker {reply.index}, not 1"
        srv.request("exited")  # raises HarnessError if the master died (of SIGPIPE)

    @pytest.mark.requirement("FP-09")
    def test_no_live_worker(self, server: StartServer) -> None:
        srv = _manual(server(workers=2, master_setup=_sigpipe_default))
        srv.kill_worker(0)
        srv.kill_worker(1)
        with srv.connect() as client:
            client.sendall(b"fp09")
            outcome = outcome_of(lambda: srv.dispatch(timeout=2.0))
            reply = read_reply(client, b"", timeout=5.0)
        assert isinstance(outcome, OSError), (
            f"with both workers dead, dispatch(timeout=2) gave {outcome!r}, expected OSError"
        )
        assert not reply.answered, (
            f"with both workers dead the client was answered by pid {reply.pid}"
        )
        assert reply.end in ("eof", "reset"), f"the client {describe_reply(reply, 5)}"

    @pytest.mark.requirement("FP-10")
    @needs("served")
    def test_dispatch_timeout(self, server: StartServer) -> None:
        srv = server(workers=2)
        # past the first dispatch, which drops worker ends, before the fd baseline
        served(srv, "the warm-up connection")
        _manual(srv)
        before = fd_counts(srv)
        started = time.monotonic()
        outcome = outcome_of(lambda: srv.dispatch(timeout=0.3))
        elapsed = time.monotonic() - started
        assert isinstance(outcome, TimeoutError), (
            f"dispatch(timeout=0.3) without a client gave {outcome!r} after {elapsed:.2f}s, "
            "expected TimeoutError"
        )
        assert elapsed >= 0.25, f"TimeoutError after {elapsed:.3f}s, before the 0.3s timeout"
        assert_fd_counts_flat(srv, before, "after dispatch timed out")

    @pytest.mark.requirement("FP-11")
    def test_close_wakes_blocked_workers(self, server: StartServer) -> None:
        srv = _manual(server(workers=2))
        srv.call("close")
        srv.wait_events("eof", 2, timeout=3.0)  # 1 s by the contract, slack for a busy machine

    @pytest.mark.requirement("FP-12")
    @needs("served")
    def test_idle_workers_preferred(self, server: StartServer) -> None:
        srv = server(workers=3)
        busy, held = srv.hold()
        try:
            require_served(srv, held, "the connection to hold")
            idle = [i for i in range(len(srv.worker_pids)) if i != held.index]
            for n in range(6):
                wait_in_accept(srv, idle)
                reply = srv.request_reply(timeout=5.0)
                assert reply.answered, (
                    f"request {n} {describe_reply(reply, 5)} while worker {held.index} was busy "
                    f"and workers {idle} waited in accept: it went to the busy worker"
                )
                assert reply.index != held.index, (
                    f"request {n} was served by the busy worker {held.index}"
                )
        finally:
            busy.close()

    @pytest.mark.requirement("FP-13")
    @needs("served")
    def test_instances_are_isolated(self, server: StartServer) -> None:
        srv = server(workers=2)
        first = srv.ipc_objects()
        second = srv.add_instance("serving")
        for inst, info in enumerate(srv.instances):
            for _ in range(4):
                reply = srv.request_reply(inst=inst)
                assert reply.answered, f"a client of instance {inst} {describe_reply(reply, 5)}"
                assert reply.pid in info.worker_pids, (
                    f"a connection of instance {inst} reached another instance's worker"
                )
        if first:
            own = [o for o in srv.ipc_objects() if o not in first]
            assert own, "the second instance uses the first one's IPC objects"
        srv.set_auto(False, inst=second.number)
        srv.call("close", inst=second.number)
        assert all(o in srv.ipc_objects() for o in first), (
            "closing one instance removed the other's IPC objects"
        )
        after = srv.request_reply(inst=0)
        assert after.answered, (
            f"after the second instance's close(), a client of the first {describe_reply(after, 5)}"
        )

    @pytest.mark.requirement("FP-14")
    @needs("served")
    def test_full_fd_table_in_a_worker(self, server: StartServer) -> None:
        srv = server(workers=1)
        served(srv, "the warm-up connection")
        before = fd_counts(srv, ["worker 0"])
        served(srv, "the request that fills the fd table", data=b"fill")
        srv.wait_events("filled", 1)
        victim = srv.request_reply(timeout=5.0)
        assert not victim.answered and victim.end in ("eof", "reset"), (
            f"with a full fd table the client should see EOF, saw {victim.end}"
        )
        srv.wait_events("accept-error", 1)
        reply = srv.request_reply(timeout=5.0)
        assert reply.answered, (
            f"once fds were free again, the next client {describe_reply(reply, 5)}: "
            "the worker did not recover"
        )
        assert_fd_counts_flat(srv, before, "after the fd table was full")

    @pytest.mark.requirement("FP-15")
    @pytest.mark.parametrize(
        ("upto", "calls"),
        [
            ("listening", [("dispatch", (0.2,))]),
            ("listening", [("enter_worker", (0,))]),
            ("channels", [("accept", ())]),
            ("channels", [("close", ()), ("dispatch", (0.2,))]),
        ],
        ids=[
            "dispatch-before-open_channels",
            "enter_worker-before-open_channels",
            "accept-without-enter_worker",
            "dispatch-after-close",
        ],
    )
    def test_out_of_order_calls(
        self, server: StartServer, upto: str, calls: list[tuple[str, tuple[object, ...]]]
    ) -> None:
        srv = server(upto=upto)
        *setup, (method, args) = calls
        for name, a in setup:
            srv.call(name, *a)
        if method in ("dispatch", "accept"):
            args = (LISTENER, *args)
        with pytest.raises(BaseException) as info:
            srv.call(method, *args, timeout=5.0)
        assert isinstance(info.value, CLEAR_ERRORS), (
            f"{method}() out of order raised {type(info.value).__name__}: {info.value}"
        )

    @pytest.mark.requirement("FP-16")
    @pytest.mark.parametrize("workers", [0, -1, "2", True, 1.5], ids=repr)
    def test_invalid_worker_count(self, server: StartServer, workers: object) -> None:
        srv = server(upto="listening")
        fds, ipc = fd_counts(srv, ["master"]), srv.ipc_objects()
        with pytest.raises(BaseException) as info:
            srv.call("open_channels", workers)
        expected = (
            ValueError if isinstance(workers, int) and not isinstance(workers, bool) else TypeError
        )
        assert isinstance(info.value, expected), (
            f"open_channels({workers!r}) raised {info.value!r}, not {expected.__name__}"
        )
        assert_fd_counts_flat(srv, fds, f"after open_channels({workers!r})")
        assert srv.ipc_objects() == ipc
