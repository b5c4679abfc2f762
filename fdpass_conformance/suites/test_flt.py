"""FLT: faults on the data path (FLT-05, the stateful property test, lives in its own module)."""

from __future__ import annotations

import array
import contextlib
import errno
import os
import signal
import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from .. import cases
from ..harness.server import ProxyServer, read_reply
from ..leaks.fds import fd_count, fd_links
from ..outcomes import blocked, not_applicable
from .applicability import assume_served, require_served, served, served_owner
from .base import StartServer, SuiteBase, needs
from .evidence import (
    Baseline,
    FdSnapshot,
    assert_released,
    describe_fds,
    describe_reply,
    hidden_errno,
    instrument,
    left_hanging,
    trouble,
    wait_until,
)
from .faultctl import counted_fault
from .steps import close_quietly, fd_passing_only, raised_by, setup_until_failure, timed_dispatch

#: Errors a real sendmsg of SCM_RIGHTS reports (the cases of FLT-01, in cases.py).
SENDMSG_ERRORS = list(cases.SENDMSG_ERRORS)
#: Channels opened by the FLT-04 checks; socketpair number k+1 of them fails.
CHANNELS = 3


def _warm_up(srv: ProxyServer) -> None:
    """One manual dispatch, so that lazily made fds exist before a baseline is taken."""
    assume_served(srv)
    with srv.connect() as client:
        client.sendall(b"warm-up")
        try:
            srv.dispatch(timeout=5.0)
        except Exception as exc:  # a proxy that cannot dispatch at all fails FP-02, not this
            blocked(served_owner(srv.fd_passing), f"a warm-up dispatch raised {exc!r}")
        require_served(srv, read_reply(client, b"", timeout=5.0), "a dispatched client")


@contextlib.contextmanager
def _full_fd_table(srv: ProxyServer, keep_free: int) -> Iterator[None]:
    """Every free fd number of the master taken but the top ``keep_free`` (real EMFILE).

    RLIMIT_NOFILE is lowered to just above the highest fd first, so that the
    table is small and fills at once; both are undone on exit.
    """
    top = max(fd_links(srv.master_pid or 0))
    soft, _hard = srv.set_nofile("master", top + 1 + keep_free + 16)
    try:
        srv.request("fill", keep_free)
        try:
            yield
        finally:
            srv.request("unfill")
    finally:
        srv.set_nofile("master", soft)


@dataclass
class _Storm:
    """How many rounds of signals a :func:`_signal_storm` has sent so far."""

    sent: int = 0
    stop: threading.Event = field(default_factory=threading.Event)

    def wait_sent(self, rounds: int) -> None:
        assert wait_until(lambda: self.sent >= rounds, 5.0), f"{rounds} rounds of signals not sent"


@contextlib.contextmanager
def _signal_storm(
    pids: Sequence[int], sig: int = signal.SIGUSR1, interval: float = 0.002
) -> Iterator[_Storm]:
    """A thread sends ``sig`` to ``pids`` every ``interval`` seconds while the block runs."""
    storm = _Storm()

    def run() -> None:
        while not storm.stop.is_set():
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            storm.sent += 1
            storm.stop.wait(interval)

    thread = threading.Thread(target=run, name="signal-storm", daemon=True)
    thread.start()
    try:
        yield storm
    finally:
        storm.stop.set()
        thread.join(5.0)


class _Background:
    """``timed_dispatch`` in a thread, so the test can act while the master waits in it."""

    def __init__(self, srv: ProxyServer, timeout: float, slack: float) -> None:
        self.outcome: int | Exception | None = None
        self.took = 0.0
        self.failure: BaseException | None = None
        self._args = (srv, timeout, slack)
        self._thread = threading.Thread(target=self._run, name="dispatch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self.outcome, self.took = timed_dispatch(*self._args)
        except BaseException as exc:
            self.failure = exc

    def result(self) -> tuple[int | Exception, float]:
        _srv, timeout, slack = self._args
        self._thread.join(timeout + slack + 1.0)
        if self.failure is not None:
            raise self.failure
        assert self.outcome is not None, f"dispatch(timeout={timeout}) never returned"
        return self.outcome, self.took


def _handle_sigusr1(index: int) -> None:
    """worker_setup: a handler that does nothing, so SIGUSR1 only interrupts system calls."""
    signal.signal(signal.SIGUSR1, lambda signum, frame: None)


#: Bytes of one fd in SCM_RIGHTS data.
_FD_SIZE = array.array("i").itemsize


def _room_for_fds(ancbufsize: int, ancdata: Sequence[tuple[int, int, bytes]], rights: int) -> int:
    """How many fds the kernel could have put in the SCM_RIGHTS message ``ancdata[rights]``.

    The kernel fills the receiver's control buffer in order: the messages before
    the rights take their ``CMSG_SPACE``, then the rights message takes
    ``CMSG_LEN(n * sizeof(int))`` for n fds, and n is as large as that fits
    (Linux ``scm_detach_fds``); what does not fit is dropped with ``MSG_CTRUNC``.
    """
    used = sum(socket.CMSG_SPACE(len(data)) for _level, _kind, data in ancdata[:rights])
    return max(0, (ancbufsize - used - socket.CMSG_LEN(0)) // _FD_SIZE)


def _ancbufsize(args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
    """The ``ancbufsize`` of a ``recvmsg(bufsize[, ancbufsize[, flags]])`` call."""
    return int(args[1] if len(args) > 1 else kwargs.get("ancbufsize", 0))


def _recv_flags(args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
    return int(args[2] if len(args) > 2 else kwargs.get("flags", 0))


def _extra_fd(cloexec: bool) -> int | None:
    """A descriptor as the kernel would have installed it, or None where it could not.

    The write end of a fresh pipe whose read end is closed (so nothing but this
    fd keeps the pipe open), moved to the lowest free number, which is where
    the kernel installs a passed fd, with close-on-exec only if the receiver
    asked for it (``MSG_CMSG_CLOEXEC``). None when the fd table is full: the
    kernel would then have dropped the fd and set ``MSG_CTRUNC``.
    """
    try:
        read_end, write_end = os.pipe()
    except OSError:
        return None
    os.close(read_end)
    try:
        fd = os.dup(write_end)  # the lowest free number: read_end's, or lower
    except OSError:
        fd = write_end
    else:
        os.close(write_end)
    os.set_inheritable(fd, not cloexec)
    return fd


def _doctor_fd_messages(variant: str, marker: str, nth: int = 2) -> Callable[[int], None]:
    """worker_setup: the ``nth`` fd message the worker receives comes back doctored.

    ``socket.socket.recvmsg`` is wrapped in the worker; the real data and fds
    are kept, and the result is one the kernel could have returned to that very
    call (docs/faults.md):

    * ``"ctrunc"``: ``MSG_CTRUNC`` is added to the flags, as when the sender sent
      more fds than fit, or the fd table filled up midway;
    * ``"extra-fd"``: the sender sent one fd more. If the receiver's control
      buffer (its ``ancbufsize``) has room for it, the fd is appended to the
      SCM_RIGHTS data (see :func:`_extra_fd`); if not, the kernel would have
      dropped it: the result is the real fds with ``MSG_CTRUNC``.

    A line is appended to ``marker`` when it happens, naming what was returned,
    so that the suite knows the doctoring took place and how.
    """

    def setup(index: int) -> None:
        original = socket.socket.recvmsg
        seen = 0

        def recvmsg(self: socket.socket, *args: Any, **kwargs: Any) -> Any:
            nonlocal seen
            data, ancdata, flags, address = original(self, *args, **kwargs)
            rights = [
                i
                for i, (level, kind, _) in enumerate(ancdata)
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS
            ]
            if not rights:
                return data, ancdata, flags, address
            seen += 1
            if seen != nth:
                return data, ancdata, flags, address
            doctored, how = list(ancdata), variant
            if variant == "extra-fd":
                level, kind, payload = ancdata[rights[0]]
                room = _room_for_fds(_ancbufsize(args, kwargs), ancdata, rights[0])
                cloexec = bool(_recv_flags(args, kwargs) & getattr(socket, "MSG_CMSG_CLOEXEC", 0))
                fd = None
                if not flags & socket.MSG_CTRUNC and room > len(payload) // _FD_SIZE:
                    fd = _extra_fd(cloexec)
                if fd is None:
                    how = f"extra-fd-truncated room={room}"
                    flags |= socket.MSG_CTRUNC
                else:
                    how = f"extra-fd room={room}"
                    extra = array.array("i", [fd]).tobytes()
                    doctored[rights[0]] = (level, kind, payload + extra)
            else:
                flags |= socket.MSG_CTRUNC
            with open(marker, "a", encoding="ascii") as fh:
                fh.write(f"{how} {os.getpid()}\n")
            return data, doctored, flags, address

        socket.socket.recvmsg = recvmsg  # type: ignore[method-assign, assignment]

    return setup


def _check_setup_failure(
    srv: ProxyServer,
    base: Baseline,
    stage: str,
    exc: Exception | None,
    kept: FdSnapshot,
    cause: str,
) -> None:
    """FLT-04's verdict on a setup that met EMFILE from socketpair.

    The fds are judged at once (the channel ends made before the failure must
    be closed), the IPC objects only after ``close()``: keeping the queue of
    ``create_socket`` until then is IPC-03's failure, not this one's.
    """
    assert exc is not None, f"{cause}, yet create_socket and open_channels both succeeded"
    assert isinstance(exc, OSError) and exc.errno == errno.EMFILE, (
        f"{cause}: {stage} raised {exc!r} (errno {getattr(exc, 'errno', None)}), "
        "expected OSError with errno EMFILE"
    )
    assert_released(srv, kept, srv.ipc_objects(), f"{cause}: after {stage} raised")
    close_quietly(srv)
    assert_released(srv, base.fds, base.ipc, f"{cause}: after {stage} raised and close()")
    assume_served(srv)
    extra = srv.add_instance("serving").number
    served(srv, f"{cause}: a client of a new instance afterwards", timeout=3.0, inst=extra)


class FaultSuite(SuiteBase):
    @pytest.mark.requirement("FLT-01")
    @needs("served")
    @pytest.mark.parametrize("times", [1, None], ids=["once", "always"])
    @pytest.mark.parametrize("error", SENDMSG_ERRORS)
    def test_failing_sendmsg_is_not_swallowed(
        self, server: StartServer, request: pytest.FixtureRequest, error: str, times: int | None
    ) -> None:
        srv = server(workers=2)
        srv.set_auto(False)
        _warm_up(srv)
        pid = srv.master_pid or 0
        before = fd_count(pid)
        with srv.connect() as client:
            client.sendall(b"flt01")
            with counted_fault(srv, request, "sendmsg", error, times=times) as fault:
                outcome, took = timed_dispatch(srv, 2.0, 5.0)
            reply = read_reply(client, b"", timeout=2.0)
        if fault.injected == 0:
            not_applicable("dispatch made no sendmsg() call")
        what = f"sendmsg failed with {error} ({'every call' if times is None else 'once'})"
        if isinstance(outcome, int):
            assert reply.answered, (
                f"{what}, dispatch returned {outcome}, but the client got no answer "
                f"({reply.end}): the failure was swallowed"
            )
            assert reply.index == outcome, (
                f"{what}, dispatch returned {outcome}, but worker {reply.index} served the client"
            )
        else:
            assert isinstance(outcome, OSError), f"{what}: dispatch raised {outcome!r}, not OSError"
            hidden = hidden_errno(outcome, error, took, 2.0)
            assert not hidden, f"{what}: {hidden}"
            assert reply.end != "timeout", (
                f"{what}: dispatch raised {outcome!r} and left the client hanging (no EOF in 2 s)"
            )
        after = fd_count(pid)
        # Fewer is no leak: after EPIPE a master may close the dead worker's channel end.
        assert after <= before, (
            f"{what}: the master's fds went {before} -> {after} [{describe_fds(pid)}]"
        )

    @pytest.mark.requirement("FLT-02")
    @needs("served")
    def test_emfile_from_accept_surfaces_and_dispatch_recovers(self, server: StartServer) -> None:
        srv = server(workers=2)
        srv.set_auto(False)
        _warm_up(srv)
        with srv.connect() as first, srv.connect() as second:
            first.sendall(b"flt02-first")
            with _full_fd_table(srv, keep_free=0):
                outcome, _took = timed_dispatch(srv, 2.0, 5.0)
            assert isinstance(outcome, OSError) and outcome.errno == errno.EMFILE, (
                f"with the master's fd table full, dispatch gave {outcome!r}, "
                "expected OSError with errno EMFILE"
            )
            second.sendall(b"flt02-second")
            again, _took = timed_dispatch(srv, 2.0, 5.0)
            assert isinstance(again, int), f"once fds were free again, dispatch raised {again!r}"
            reply = read_reply(first, b"", timeout=3.0)
            assert not left_hanging(reply), "the client waiting during EMFILE was left hanging"
            if reply.answered:  # the waiting client was dispatched; the second is next
                again, _took = timed_dispatch(srv, 2.0, 5.0)
                assert isinstance(again, int), f"the second dispatch after EMFILE raised {again!r}"
            reply = read_reply(second, b"", timeout=3.0)
            assert reply.answered, f"a client after the EMFILE {describe_reply(reply, 3)}"

    @pytest.mark.requirement("FLT-03")
    @needs("served")
    def test_signals_during_dispatch_do_not_break_it(self, server: StartServer) -> None:
        srv = server(workers=2)
        fd_passing_only(srv)
        srv.request("count_signal", int(signal.SIGUSR1))
        srv.set_auto(False)
        waiting = _Background(srv, 3.0, 5.0)
        with _signal_storm([srv.master_pid or 0]) as storm:
            storm.wait_sent(25)  # the master is handling signals inside dispatch now
            with srv.connect() as client:
                client.sendall(b"flt03")
                try:
                    outcome, _took = waiting.result()
                except AssertionError as exc:
                    raise AssertionError(f"after {storm.sent} signals: {exc}") from None
                reply = read_reply(client, b"", timeout=3.0)
        handled = srv.request("signal_counts").get(int(signal.SIGUSR1), 0)
        instrument(handled, "no SIGUSR1 reached the master's handler")
        assert isinstance(outcome, int), (
            f"dispatch raised {outcome!r} while the master handled {handled} signals"
        )
        assert reply.answered, (
            f"the client that connected during {handled} signals was not served ({reply.end})"
        )

    @pytest.mark.requirement("FLT-03")
    def test_signals_do_not_stretch_or_cut_the_dispatch_timeout(self, server: StartServer) -> None:
        srv = server(workers=2)
        fd_passing_only(srv)
        srv.request("count_signal", int(signal.SIGUSR1))
        srv.set_auto(False)
        timeout = 0.6
        waiting = _Background(srv, timeout, 5.0)
        with _signal_storm([srv.master_pid or 0]) as storm:
            try:
                outcome, took = waiting.result()
            except AssertionError as exc:
                raise AssertionError(f"after {storm.sent} signals: {exc}") from None
        handled = srv.request("signal_counts").get(int(signal.SIGUSR1), 0)
        instrument(handled, "no SIGUSR1 reached the master's handler")
        assert isinstance(outcome, TimeoutError), (
            f"dispatch(timeout={timeout}) without a client gave {outcome!r} under {handled} "
            "signals, expected TimeoutError"
        )
        assert timeout * 0.9 <= took <= timeout + 1.0, (
            f"dispatch(timeout={timeout}) ended after {took:.2f}s under {handled} signals"
        )

    @pytest.mark.requirement("FLT-03")
    @needs("served")
    def test_signals_during_accept_do_not_break_it(self, server: StartServer) -> None:
        srv = server(workers=2, worker_setup=_handle_sigusr1)
        srv.request("count_signal", int(signal.SIGUSR1))
        pids = [srv.master_pid or 0, *srv.worker_pids]
        with _signal_storm(pids) as storm:
            storm.wait_sent(25)  # the workers are handling signals inside accept now
            replies = [srv.request_reply(b"flt03", timeout=3.0) for _ in range(6)]
        bad = [f"{n}: {r.end}" for n, r in enumerate(replies) if not r.answered]
        assert not bad, f"requests not served while signals arrived: {', '.join(bad)}"
        problem = trouble(srv, ("accept-error", "dispatch-error", "crash", "giving-up"))
        assert not problem, f"while signals arrived, {problem}"

    @pytest.mark.requirement("FLT-04")
    @pytest.mark.parametrize("k", range(CHANNELS), ids=lambda k: f"socketpair{k + 1}")
    def test_injected_socketpair_emfile_leaks_nothing(
        self, server: StartServer, request: pytest.FixtureRequest, k: int
    ) -> None:
        srv = server(upto="constructed", workers=CHANNELS)
        base = Baseline.take(srv)
        with counted_fault(srv, request, "socketpair", "EMFILE", after=k) as fault:
            stage, exc, kept = setup_until_failure(srv, 0, CHANNELS)
        if fault.injected == 0:
            calls = "no socketpair() call" if k == 0 else f"fewer than {k + 1} socketpair() calls"
            not_applicable(f"create_socket and open_channels({CHANNELS}) make {calls}")
        cause = f"socketpair() call {k + 1} failed with EMFILE"
        _check_setup_failure(srv, base, stage, exc, kept, cause)

    @pytest.mark.requirement("FLT-04")
    @pytest.mark.parametrize("k", [0, CHANNELS - 1], ids=lambda k: f"room-for-{k}")
    def test_full_fd_table_in_open_channels_leaks_nothing(
        self, server: StartServer, k: int
    ) -> None:
        srv = server(upto="constructed", workers=CHANNELS)
        fd_passing_only(srv)
        base = Baseline.take(srv)
        srv.create_socket()
        kept = FdSnapshot.of(srv.master_pid or 0)
        with _full_fd_table(srv, keep_free=2 * k):
            exc = raised_by(lambda: srv.call("open_channels", CHANNELS))
        cause = f"the master's fd table had room for {k} of {CHANNELS} channels"
        _check_setup_failure(srv, base, "open_channels", exc, kept, cause)

    @pytest.mark.requirement("FLT-06")
    @needs("served")
    @pytest.mark.parametrize("variant", ["ctrunc", "extra-fd"])
    def test_doctored_fd_message_leaks_nothing(
        self, server: StartServer, tmp_path: Path, variant: str
    ) -> None:
        marker = tmp_path / "doctored"
        srv = server(workers=1, worker_setup=_doctor_fd_messages(variant, str(marker)))
        served(srv, "the first connection")
        worker = srv.worker_pids[0]
        before = fd_count(worker)
        reply = srv.request_reply(b"flt06", timeout=3.0)
        if not marker.exists():
            not_applicable(
                "the worker never received an fd through socket.socket.recvmsg "
                "(not a Python socket receiver), so no message could be doctored"
            )
        how = marker.read_text(encoding="ascii").split()
        what = {
            "ctrunc": "with MSG_CTRUNC set",
            "extra-fd": "with one fd too many",
            "extra-fd-truncated": (
                "carrying one fd more than the receiver's control buffer holds "
                "(so, as the kernel does, with MSG_CTRUNC and the extra fd dropped)"
            ),
        }[how[0]]
        assert not left_hanging(reply), (
            f"the client of the fd message {what} was left hanging (no answer, no EOF in 3 s)"
        )
        wait_until(lambda: fd_count(worker) == before, 1.0)
        after = fd_count(worker)
        assert after == before, (
            f"worker 0's fds went {before} -> {after} after an fd message {what} "
            f"[{describe_fds(worker)}]"
        )
        reply = srv.request_reply(b"flt06-next", timeout=3.0)
        assert reply.answered and reply.pid == worker, (
            f"the connection after the fd message {what} was not served by the worker "
            f"({reply.end}, pid {reply.pid})"
        )
        problem = trouble(srv, ("crash", "giving-up"))
        assert not problem, f"after the fd message {what}: {problem}"
