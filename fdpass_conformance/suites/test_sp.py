"""SP: what every proxy must do, whatever its strategy."""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import time

import pytest

from .. import cases
from ..harness.server import ProxyServer, read_reply
from ..leaks.ports import port_is_free
from ..outcomes import blocked, not_applicable
from ..processes import is_zombie
from .applicability import require_served, served, served_each
from .base import StartServer, SuiteBase, needs
from .evidence import assert_fd_counts_flat, describe_reply, fd_counts, free_port, wait_in_accept
from .faultctl import counted_fault
from .steps import fd_passing_only, outcome_of, raised_by

#: The cases of SP-06, SP-07, SP-18 and SP-19 are in fdpass_conformance/cases.py, the
#: table docs/spec.md is checked against.
#: SP-18 and SP-19 judge the same failing steps: each fault of setup, then of dispatch.
_EACH_FAULT = pytest.mark.parametrize(
    "fault", (*cases.SETUP_FAULTS, *cases.DISPATCH_FAULTS), ids=lambda f: f.id
)


def _served_by(server: ProxyServer, timeout: float = 5.0) -> int | None:
    """One request; the index of the worker that answered it (None: no answer)."""
    with server.connect(timeout) as client:
        return read_reply(client, b"ping", timeout, eof_grace=0).index


def _leaves_nothing(server: ProxyServer, inst: int, call: str, *args: object) -> BaseException:
    """Run a call that must fail in instance ``inst``; assert it left no fd and no IPC object."""
    fds = fd_counts(server, ["master"])
    ipc = server.ipc_objects()
    outcome = outcome_of(lambda: server.call(call, *args, inst=inst))
    shown = ", ".join(map(repr, args))
    if isinstance(outcome, dict) and "sockname" in outcome:  # a socket, described
        host, port = outcome["sockname"][:2]
        outcome = f"a listening socket on {host}:{port}"
    assert isinstance(outcome, BaseException), (
        f"{call}({shown}) returned {outcome} instead of raising"
    )
    assert_fd_counts_flat(server, fds, f"after the failing {call}({shown})")
    left = server.ipc_objects()
    assert left == ipc, f"{call}({shown}) left IPC objects behind: {left}"
    return outcome


def _fail(server: StartServer, request: pytest.FixtureRequest, fault: cases.Fault) -> OSError:
    """The OSError of the step that ``fault`` makes fail.

    A setup fault fails the first such call of ``create_socket`` (then
    ``open_channels``). A dispatch fault fails every such call of
    ``dispatch(timeout=2)`` with a client waiting, so that re-routing the
    connection to another worker cannot hide the error; no connection needs to
    be served first, the errno is evidence of its own. n/a when the step makes
    no such call. A step that succeeds all the same gives no error to judge:
    recovering from a setup failure is judged by the requirements about that
    failure (SP-04, SP-08, IPC-06, FLT-04), a dispatch that hides its failure
    by FLT-01, which blocks this check.
    """
    dispatch = fault in cases.DISPATCH_FAULTS
    srv = server(workers=2) if dispatch else server(upto="constructed")
    step = "dispatch" if dispatch else "create_socket and open_channels"
    what = f"{'every' if dispatch else 'the first'} {fault.call}() failed with {fault.error}"
    if dispatch:
        fd_passing_only(srv)
        srv.set_auto(False)
    with contextlib.ExitStack() as stack:
        if dispatch:
            stack.enter_context(srv.connect()).sendall(b"sp18")
        times = None if dispatch else 1
        with counted_fault(srv, request, fault.call, fault.error, times=times) as injection:
            raised = raised_by(lambda: _run(srv, dispatch))
    if not injection.injected:
        not_applicable(f"{step} made no {fault.call}() call")
    if raised is None and dispatch:
        blocked("FLT-01", f"dispatch succeeded although {what}")
    if raised is None:
        pytest.skip(f"precondition failed: {step} succeeded although {what}")
    assert isinstance(raised, OSError), f"{what} in {step}, which raised {raised!r}, not OSError"
    return raised


def _run(srv: ProxyServer, dispatch: bool) -> None:
    if dispatch:
        srv.request("dispatch", 2.0, timeout=7.0)
        return
    srv.create_socket()
    if srv.fd_passing:
        srv.call("open_channels", 2)


class SocketProxySuite(SuiteBase):
    @pytest.mark.requirement("SP-01")
    def test_factory_returns_fresh_complete_objects(self, server: StartServer) -> None:
        srv = server(upto="constructed")
        srv.add_instance("constructed")
        first, second = srv.request("inspect", inst=0), srv.request("inspect", inst=1)
        assert first["missing"] == [], f"missing contract members: {first['missing']}"
        assert first["identity"] != second["identity"], "the factory returned the same object twice"

    @pytest.mark.requirement("SP-02")
    def test_is_supported_is_pure(self, server: StartServer) -> None:
        srv = server(upto="constructed")
        ipc = srv.ipc_objects()
        fds = fd_counts(srv, ["master"])
        answers = [srv.call("is_supported") for _ in range(3)]
        assert all(isinstance(a, bool) for a in answers), f"is_supported() returned {answers!r}"
        assert len(set(answers)) == 1, f"is_supported() changed its answer: {answers}"
        assert_fd_counts_flat(srv, fds, "after is_supported()")
        assert srv.ipc_objects() == ipc, "is_supported() created IPC objects"

    @pytest.mark.requirement("SP-03")
    def test_listener_properties(self, server: StartServer) -> None:
        srv = server(upto="listening")
        desc = srv.instances[0].listener
        assert desc["family"] == socket.AF_INET, "listener is not AF_INET"
        assert desc["type"] == socket.SOCK_STREAM, "listener is not SOCK_STREAM"
        assert desc["listening"], "listener is not listening (SO_ACCEPTCONN)"
        assert not desc["nonblock"], "listener is non-blocking (O_NONBLOCK set)"
        assert desc["cloexec"], "listener is inheritable (FD_CLOEXEC clear)"
        assert desc["sockname"][1] != 0, "create_socket(0) did not bind an ephemeral port"
        with srv.connect(timeout=5.0):
            pass  # reachable on 127.0.0.1: the kernel completes the handshake from the backlog

    @pytest.mark.requirement("SP-05")
    def test_listener_has_reuseaddr(self, server: StartServer) -> None:
        srv = server(upto="listening")
        assert srv.instances[0].listener["reuseaddr"], "SO_REUSEADDR is not set on the listener"

    @pytest.mark.requirement("SP-04")
    def test_explicit_port_is_honoured(self, server: StartServer) -> None:
        port = free_port()
        srv = server(upto="listening", port=port)
        assert srv.port == port, f"asked for port {port}, listener is on {srv.port}"

    @pytest.mark.requirement("SP-06")
    def test_every_protocol_gives_a_stream_listener(self, server: StartServer) -> None:
        srv = server(upto="constructed")
        for protocol in cases.PROTOCOLS:
            inst = srv.add_instance("constructed").number
            desc = srv.call("create_socket", 0, protocol.value, inst=inst)
            assert desc["type"] == socket.SOCK_STREAM and desc["listening"], (
                f"protocol {protocol.label} did not give a listening stream socket: {desc}"
            )
            srv.call("close", inst=inst)

    @pytest.mark.requirement("SP-06")
    @pytest.mark.parametrize("protocol", cases.BAD_PROTOCOLS, ids=lambda c: c.id)
    def test_unknown_protocol_is_rejected(self, server: StartServer, protocol: cases.Case) -> None:
        srv = server(upto="constructed")
        exc = _leaves_nothing(srv, 0, "create_socket", 0, protocol.value)
        assert isinstance(exc, ValueError), (
            f"protocol {protocol.label} raised {exc!r}, not ValueError"
        )

    @pytest.mark.requirement("SP-07")
    @pytest.mark.parametrize("port", cases.BAD_PORTS, ids=lambda c: c.id)
    def test_invalid_port_is_rejected(self, server: StartServer, port: cases.Case) -> None:
        srv = server(upto="constructed")
        exc = _leaves_nothing(srv, 0, "create_socket", port.value)
        assert isinstance(exc, (ValueError, TypeError, OverflowError)), (
            f"port {port.label} raised {exc!r}, not ValueError/TypeError/OverflowError"
        )

    @pytest.mark.requirement("SP-08")
    def test_port_in_use(self, server: StartServer) -> None:
        with socket.socket() as holder:
            holder.bind(("127.0.0.1", 0))
            holder.listen()
            port = holder.getsockname()[1]
            srv = server(upto="constructed")
            exc = _leaves_nothing(srv, 0, "create_socket", port)
        assert isinstance(exc, OSError), f"a port in use raised {exc!r}, not OSError"
        assert exc.errno == errno.EADDRINUSE, f"errno is {exc.errno}, not EADDRINUSE"

    @pytest.mark.requirement("SP-09")
    @needs("served")  # SP-09 owns it for a shared listener, FP-02 for an fd-passing proxy
    def test_data_flows_both_ways(self, server: StartServer) -> None:
        srv = server(workers=2)
        for n in range(4):
            with srv.connect() as client:
                payload = f"sp09-{n}".encode()
                reply = read_reply(client, payload, timeout=5.0)
                if srv.fd_passing:
                    require_served(srv, reply, f"connection {n}")
                assert reply.answered, f"connection {n} {describe_reply(reply, 5.0)}"
                assert reply.data == payload.decode(), "the worker saw other data than was sent"
                assert reply.peer == client.getsockname()[:2], "peer address is not the client's"

    @pytest.mark.requirement("SP-10")
    @needs("served")
    def test_served_by_workers(self, server: StartServer) -> None:
        srv = server(workers=2)
        for reply in served_each(srv, 4, "connection {n}"):
            assert reply.pid != srv.master_pid, "served by the master"
            assert reply.pid in srv.worker_pids, f"served by pid {reply.pid}, not a worker"

    @pytest.mark.requirement("SP-11")
    @needs("served")
    def test_client_sees_eof_when_the_worker_closes(self, server: StartServer) -> None:
        srv = server(workers=2)
        for n in range(4):
            reply = served(srv, f"connection {n}", timeout=3.0)
            assert reply.end == "eof", (
                f"the worker closed the connection but the client saw {reply.end}: "
                "another process still holds a copy"
            )

    @pytest.mark.requirement("SP-12")
    @needs("served")
    def test_close_releases_everything(self, server: StartServer) -> None:
        srv = server(upto="constructed")
        fds = fd_counts(srv, ["master"])
        srv.create_socket()
        if srv.fd_passing:
            srv.call("open_channels", 2)
        srv.fork_workers()
        served(srv, "the connection before close()")
        if srv.fd_passing:
            srv.set_auto(False)
        srv.call("close")
        srv.call("close")  # idempotent: must not raise
        assert srv.ipc_objects() == [], "close() left IPC objects"
        assert_fd_counts_flat(srv, fds, "after close() in the master", may_release=True)
        port = srv.port
        assert port is not None
        report = srv.shutdown(close_proxy=False)
        assert not report.processes_left, f"processes survived: {report.processes_left}"
        assert port_is_free(port), f"port {port} is still bound after close() and worker exit"

    @pytest.mark.requirement("SP-13")
    @needs("served")
    def test_every_worker_serves(self, server: StartServer) -> None:
        srv = server(workers=3)
        served = []
        for _ in range(24):
            wait_in_accept(srv, [0, 1, 2])
            served.append(_served_by(srv))
        indices = {i for i in served if i is not None}
        assert indices == {0, 1, 2}, (
            f"of 24 sequential requests, workers {sorted(indices)} served "
            f"{len(served) - served.count(None)} ({served.count(None)} unanswered); "
            f"worker(s) {sorted({0, 1, 2} - indices)} served none"
        )

    @pytest.mark.requirement("SP-14")
    def test_accept_on_closed_listener_fails_fast(self, server: StartServer) -> None:
        srv = server(workers=2)
        if srv.fd_passing:  # its master accepts inside dispatch: go through it (spec.md)
            srv.set_auto(False)
            what = "dispatch(closed listener, timeout=1)"
            outcome = outcome_of(lambda: srv.request("dispatch_closed_listener", 1.0, timeout=5.0))
        else:
            what = "accept(closed listener)"
            outcome = outcome_of(lambda: srv.request("accept_closed_listener", timeout=5.0))
        assert isinstance(outcome, OSError), f"{what} gave {outcome!r}, expected OSError"

    @pytest.mark.requirement("SP-15")
    def test_reuseport_listener_shares_its_port(self, server: StartServer) -> None:
        srv = server(upto="listening")
        if not srv.instances[0].listener.get("reuseport"):
            not_applicable("the listener has no SO_REUSEPORT")
        second = srv.add_instance("constructed").number
        desc = srv.create_socket(port=srv.port, inst=second)
        assert desc["sockname"][1] == srv.instances[0].port, (
            f"a second SO_REUSEPORT listener asked for port {srv.port} got {desc['sockname'][1]}"
        )

    @pytest.mark.requirement("SP-16")
    @needs("served")
    def test_fd_counts_flat_over_200_connections(self, server: StartServer) -> None:
        srv = server(workers=2)
        served_each(srv, 4, "warm-up connection {n}")
        before = fd_counts(srv)
        for n in range(200):
            reply = srv.request_reply()
            assert reply.answered and reply.end == "eof", (
                f"connection {n} of 200 {describe_reply(reply, 5.0)}"
            )
        assert_fd_counts_flat(srv, before, "over 200 sequential connections", may_release=True)

    @pytest.mark.requirement("SP-17")
    @needs("served")
    def test_64_concurrent_clients(self, server: StartServer) -> None:
        srv = server(workers=2)
        clients = [srv.connect(timeout=10.0) for _ in range(64)]
        try:
            for c in clients:
                c.sendall(b"concurrent")
            deadline = time.monotonic() + 10.0
            replies = [
                read_reply(c, b"", deadline - time.monotonic(), eof_grace=0) for c in clients
            ]
        finally:
            for c in clients:
                c.close()
        bad = [r.end for r in replies if not r.answered]
        assert not bad, f"{len(bad)} of 64 concurrent clients were not served: {bad[:5]}"

    @pytest.mark.requirement("SP-18")
    @_EACH_FAULT
    def test_errors_keep_the_errno(
        self, server: StartServer, request: pytest.FixtureRequest, fault: cases.Fault
    ) -> None:
        # Only the errno is judged here: what a failed setup leaves behind is
        # IPC-03's (and SP-08's) to judge, not this requirement's.
        exc = _fail(server, request, fault)
        assert exc.errno == getattr(errno, fault.error), (
            f"injected {fault.error} into {fault.call}, got errno {exc.errno}: {exc}"
        )
        if exc.strerror is not None and exc.errno is not None:
            assert os.strerror(exc.errno) in exc.strerror, (
                f"injected {fault.error} into {fault.call}: strerror {exc.strerror!r} does not "
                f"agree with errno {exc.errno} ({os.strerror(exc.errno)})"
            )

    @pytest.mark.requirement("SP-19")
    @_EACH_FAULT
    def test_errors_name_the_step(
        self, server: StartServer, request: pytest.FixtureRequest, fault: cases.Fault
    ) -> None:
        exc = _fail(server, request, fault)  # named in the words of any language (cases.py)
        names = "/".join(cases.STEP_NAMES.get(fault.call, (fault.call,)))
        assert cases.names_step(str(exc), fault.call), (
            f"injected {fault.error} into {fault.call}: the message does not name the step "
            f"(none of {names}): {exc}"
        )

    @pytest.mark.requirement("SP-20")
    @needs("served")
    def test_accepted_sockets_are_blocking_and_cloexec(self, server: StartServer) -> None:
        replies = served_each(server(workers=2), 4, "connection {n}")
        assert all(r.nonblock is False for r in replies), "accept() returned a non-blocking socket"
        assert all(r.cloexec is True for r in replies), "accept() returned an inheritable socket"

    @pytest.mark.requirement("SP-21")
    def test_the_program_master_reaps_its_workers(self, server: StartServer) -> None:
        srv = server(workers=2)
        if not srv.exec_impl:
            not_applicable("an in-process proxy's workers are the harness's children, reaped by it")
        pid = srv.worker_pids[0]
        srv.kill_worker(0)  # returns once the worker is dead (a zombie or gone)
        srv.call("is_supported")  # one request: the master's loop gets its chance to reap
        deadline = time.monotonic() + 3.0
        while is_zombie(pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not is_zombie(pid), (
            f"worker 0 (pid {pid}) is still a zombie 3 s after it was killed, and its master "
            "answered a request meanwhile: the program's master never reaps its workers"
        )
