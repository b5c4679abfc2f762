"""IPC: the System V objects a proxy creates, as ``ipcs`` in the server's namespace lists them.

The helpers at the top (a baseline of the master, a setup that stops at the
first failure, a fault that reports whether it fired) are shared with the
FLT suite, whose setup faults are judged the same way.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import os
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

import psutil
import pytest

from ..harness.server import HarnessError, ProxyServer, read_reply
from ..leaks.fds import fd_inventory
from ..leaks.ipcs import IpcObject
from ..leaks.ports import port_is_free
from ..outcomes import not_applicable
from .applicability import SERVED, known_shortfall, served, traffic
from .base import StartServer, SuiteBase, needs
from .evidence import describe_reply, free_port, left_hanging
from .faultctl import counted_fault

#: Each kind of call that create_socket/open_channels may make, with the errno it is
#: failed with in the IPC-03 sweep (a plausible one for that call).
SETUP_CALLS = [
    ("socket", "EMFILE"),
    ("setsockopt", "ENOMEM"),
    ("bind", "EACCES"),
    ("listen", "EADDRINUSE"),
    ("socketpair", "ENFILE"),
    ("msgget", "ENOMEM"),
]
#: The sweep stops at the first run that no longer reaches the N-th call, or here.
MAX_SWEEP = 8


# -- shared with the FLT suite ------------------------------------------------


def instrument(condition: object, what: str) -> None:
    """The instrument of this check did not work here (a signal never arrived, say): the
    requirement could not be checked, which is a skip, not the proxy's outcome."""
    if not condition:
        pytest.skip(f"could not be checked here: {what}")


def describe_objects(objects: Sequence[IpcObject]) -> str:
    return "; ".join(o.describe() for o in objects) or "none"


def fd_links(pid: int) -> dict[int, str]:
    """fd -> what it refers to (``socket:[inode]``, ``pipe:[inode]``, a path), cheaply.

    On Linux only the ``/proc/PID/fd`` links are read, without classifying
    sockets through the socket tables, which is what makes it cheap.
    """
    if not sys.platform.startswith("linux"):
        return {f.fd: f.target for f in fd_inventory(pid)}
    links: dict[int, str] = {}
    for name in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(FileNotFoundError):  # closed meanwhile
            links[int(name)] = os.readlink(f"/proc/{pid}/fd/{name}")
    return links


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


def setup_until_failure(
    srv: ProxyServer, inst: int, workers: int, port: int = 0
) -> tuple[str, Exception | None, FdSnapshot]:
    """``create_socket``, then ``open_channels`` for an fd-passing proxy, up to the first error.

    Returns (the step that raised, or "" if none did; its exception; the
    master's fds after the last step that succeeded, which is what the master
    may still hold after the failure). A hang is not an outcome: the harness
    error propagates.
    """
    pid = master_pid(srv)
    kept = FdSnapshot.of(pid)
    try:
        srv.create_socket(port=port, inst=inst)
    except HarnessError:
        raise
    except Exception as exc:
        return "create_socket", exc, kept
    kept = FdSnapshot.of(pid)
    if srv.instances[inst].fd_passing:
        try:
            srv.call("open_channels", workers, inst=inst)
        except HarnessError:
            raise
        except Exception as exc:
            return "open_channels", exc, kept
    return "", None, kept


def close_quietly(srv: ProxyServer, inst: int = 0) -> Exception | None:
    """The master's ``close()``; its exception (judged elsewhere) is returned, not raised."""
    try:
        srv.call("close", inst=inst, timeout=5.0)
    except HarnessError:
        raise
    except Exception as exc:
        return exc
    return None


def trouble(srv: ProxyServer, kinds: Sequence[str]) -> str:
    """The first event of one of ``kinds`` the server's processes reported, in one line, or ""."""
    srv.events.drain()
    for e in srv.events.events:
        if e.kind in kinds:
            detail = e.detail.get("message") or e.detail
            return f"{e.role} {e.index} (pid {e.pid}) reported {e.kind}: {detail}"
    return ""


def timed_dispatch(
    srv: ProxyServer, timeout: float, slack: float, inst: int = 0
) -> tuple[int | Exception, float]:
    """One manual ``dispatch(timeout)``: (index or the exception, seconds it took).

    A dispatch still running ``timeout + slack`` seconds later fails the test.
    """
    start = time.monotonic()
    try:
        outcome: int | Exception = int(
            srv.request("dispatch", timeout, inst=inst, timeout=timeout + slack)
        )
    except HarnessError as exc:
        raise AssertionError(f"dispatch(timeout={timeout}) did not return: {exc}") from None
    except Exception as exc:
        outcome = exc
    return outcome, time.monotonic() - start


# -- IPC ----------------------------------------------------------------------


def _bring_up(srv: ProxyServer) -> None:
    """Instance 0 of a server started with ``upto="constructed"``, up to serving."""
    srv.create_socket()
    if srv.fd_passing:
        srv.call("open_channels", srv.opts.workers)
    srv.fork_workers()


def _cpu_seconds(pids: Sequence[int]) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            times = psutil.Process(pid).cpu_times()
            total += times.user + times.system
    return total


class IpcSuite(SuiteBase):
    @pytest.mark.requirement("IPC-01")
    def test_construction_and_is_supported_create_nothing(self, server: StartServer) -> None:
        srv = server(upto="constructed")
        srv.add_instance("constructed")
        made = srv.ipc_objects()
        assert not made, f"constructing the proxy created IPC objects: {describe_objects(made)}"
        for inst in (0, 1):
            for _ in range(2):
                srv.call("is_supported", inst=inst)
        made = srv.ipc_objects()
        assert not made, f"is_supported() created IPC objects: {describe_objects(made)}"

    @pytest.mark.requirement("IPC-02")
    @pytest.mark.parametrize("upto", ["listening", "channels", "serving"])
    def test_close_removes_every_object(self, server: StartServer, upto: str) -> None:
        srv = server(upto=upto, workers=2)
        if upto == "serving":
            traffic(srv, 2)
            srv.set_auto(False)
        raised = close_quietly(srv)
        left = srv.ipc_objects()
        note = f" (close() raised {raised!r})" if raised else ""
        assert not left, f"close() after {upto} left IPC objects: {describe_objects(left)}{note}"

    @pytest.mark.requirement("IPC-03")
    @pytest.mark.parametrize(("call", "error"), SETUP_CALLS, ids=[c for c, _ in SETUP_CALLS])
    def test_failed_setup_releases_everything(
        self, server: StartServer, request: pytest.FixtureRequest, call: str, error: str
    ) -> None:
        srv = server(upto="constructed", workers=2)
        failed = reached = 0
        for n in range(1, MAX_SWEEP + 1):
            inst = 0 if n == 1 else srv.add_instance("constructed").number
            base = Baseline.take(srv)
            with counted_fault(srv, request, call, error, after=n - 1) as fault:
                stage, exc, kept = setup_until_failure(srv, inst, 2)
            if fault.injected == 0:
                close_quietly(srv, inst)
                break
            reached += 1
            if exc is not None:
                failed += 1
                what = f"{call}() call {n} failed with {error} in {stage} ({exc!r})"
                assert_released(srv, kept, base.ipc, what)
            close_quietly(srv, inst)
        if not reached:
            not_applicable(f"create_socket and open_channels make no {call}() call")
        if not failed:
            not_applicable(f"the proxy carried on after each failed {call}(): nothing to release")

    @pytest.mark.requirement("IPC-04")
    def test_objects_are_private_to_the_instance(self, server: StartServer) -> None:
        first = server(workers=1)
        own = first.ipc_objects()
        if not own:
            not_applicable("no IPC object exists while the first instance serves")
        try:
            first.add_instance("serving")
        except HarnessError:
            raise
        except Exception as exc:
            raise AssertionError(
                f"a second instance in the same process failed to start: {exc!r} "
                "(both use one fixed IPC key?)"
            ) from None
        both = first.ipc_objects()
        second_own = [o for o in both if o not in own]
        assert second_own, (
            "the second instance created no IPC object of its own: it uses the first one's "
            f"({describe_objects(own)})"
        )
        first.close()  # a second server may need the global IPC lock that this one holds
        other = server(workers=1)
        everything = [*both, *other.ipc_objects()]
        keys = [o.key for o in everything if o.key != 0]
        shared = sorted({k for k in keys if keys.count(k) > 1})
        assert not shared, (
            f"IPC key(s) {', '.join(f'0x{k:08x}' for k in shared)} used by more than one "
            "instance: a fixed key such as ftok(path), not IPC_PRIVATE or a key per instance"
        )

    @pytest.mark.requirement("IPC-05")
    def test_objects_grant_nothing_to_group_or_others(self, server: StartServer) -> None:
        srv = server(workers=2)
        traffic(srv, 2)
        objects = srv.ipc_objects()
        if not objects:
            not_applicable("no IPC object exists while serving")
        loose = [o for o in objects if o.mode & 0o077]
        assert not loose, f"IPC objects grant group/other access: {describe_objects(loose)}"

    @pytest.mark.requirement("IPC-06")
    def test_msgget_enospc_surfaces_and_leaks_nothing(self, server: StartServer) -> None:
        probe = server(upto="constructed", workers=2)
        setup_until_failure(probe, 0, 2)  # a probe under normal limits: is there a queue?
        kinds = {o.kind for o in probe.ipc_objects()}
        close_quietly(probe)
        probe.close()
        if "queue" not in kinds:
            not_applicable("no message queue exists after create_socket and open_channels")
        # A fresh server, in an IPC namespace of its own: no queue that an earlier instance
        # left behind can be reopened under a fixed key, so msgget really has to fail.
        srv = server(upto="constructed", workers=2)
        try:
            srv.set_ipc_limit("msgmni", 0)
        except (HarnessError, OSError) as exc:
            pytest.skip(f"cannot set kernel.msgmni=0 for the server: {exc}")
        try:
            inst = srv.add_instance("constructed").number
        except HarnessError:
            raise
        except Exception as exc:
            pytest.skip(f"precondition failed: constructing the proxy raised {exc!r} (IPC-01)")
        port = free_port()
        base = Baseline.take(srv)
        stage, failure, kept = setup_until_failure(srv, inst, 2, port)
        if failure is None:
            reused = [o for o in srv.ipc_objects() if o.kind == "queue" and o in base.ipc]
            if reused:
                pytest.skip(
                    "precondition failed: msgget never had to fail: queue(s) made before "
                    f"create_socket ({describe_objects(reused)}) were reused (IPC-01, IPC-04)"
                )
        assert failure is not None, (
            "with kernel.msgmni=0 in a namespace holding no queue "
            f"({describe_objects(base.ipc)} before create_socket), no queue can be made, yet "
            "create_socket and open_channels both succeeded: the msgget failure was swallowed"
        )
        assert isinstance(failure, OSError) and failure.errno == errno.ENOSPC, (
            f"{stage} raised {failure!r} (errno {getattr(failure, 'errno', None)}), "
            "expected OSError with errno ENOSPC"
        )
        assert_released(srv, kept, base.ipc, f"after {stage} failed with ENOSPC")
        close_quietly(srv, inst)
        assert_released(srv, base.fds, base.ipc, f"after {stage} failed with ENOSPC and close()")
        assert port_is_free(port), (
            f"port {port} is still bound after the ENOSPC failure and close()"
        )

    @pytest.mark.requirement("IPC-07")
    @needs("served")
    def test_queue_removed_while_serving(self, server: StartServer) -> None:
        srv = server(workers=2)
        for n in range(2):
            served(srv, f"connection {n} before the queue was removed")
        removed = srv.remove_queue()
        if not removed:
            not_applicable("the proxy has no message queue to remove")
        gone = describe_objects(removed)
        workers = list(srv.worker_pids)
        cpu_before, wall_start = _cpu_seconds(workers), time.monotonic()
        if srv.fd_passing:  # a shared listener has no dispatch: its workers' path is below
            srv.set_auto(False)
            for n in range(4):
                with srv.connect() as client:
                    client.sendall(b"ipc07")
                    outcome, took = timed_dispatch(srv, 2.0, 3.0)
                    reply = read_reply(client, b"", timeout=3.0)
                assert isinstance(outcome, (int, OSError)), (
                    f"dispatch {n} after ipcrm of {gone} raised {outcome!r}, not OSError"
                )
                assert took <= 3.0, (
                    f"dispatch(timeout=2) {n} after ipcrm of {gone} took {took:.2f}s"
                )
                assert not left_hanging(reply), (
                    f"client {n} after ipcrm of {gone} was left hanging (no answer, no EOF in 3 s)"
                )
            srv.set_auto(True)
        for n in range(4):
            reply = srv.request_reply(b"ipc07-auto", timeout=3.0)
            assert not left_hanging(reply), (
                f"request {n} after ipcrm of {gone} was left hanging (no answer, no EOF in 3 s)"
            )
        time.sleep(0.3)  # a window to measure CPU time over, not a synchronisation
        busy = _cpu_seconds(workers) - cpu_before
        wall = time.monotonic() - wall_start
        assert busy <= 0.5 * wall + 0.1, (
            f"workers used {busy:.2f}s CPU in {wall:.2f}s after ipcrm of {gone}: an error loop"
        )
        problem = trouble(srv, ("giving-up", "crash"))
        assert not problem, f"after ipcrm of {gone}: {problem}"
        if srv.fd_passing:
            srv.set_auto(False)
        raised = close_quietly(srv)
        assert raised is None, f"close() raised {raised!r} after ipcrm of {gone}"

    @pytest.mark.requirement("IPC-08")
    @needs("served")
    def test_full_queue_never_holds_dispatch(self, server: StartServer) -> None:
        srv = server(upto="constructed", workers=2)
        if not srv.fd_passing:
            not_applicable("no dispatch: a full queue can hold up only dispatch")
        try:
            srv.set_ipc_limit("msgmnb", 1)
        except (HarnessError, OSError) as exc:
            pytest.skip(f"cannot set kernel.msgmnb=1 for the server: {exc}")
        _bring_up(srv)
        for n in range(4):
            reply = srv.request_reply(timeout=3.0)
            assert reply.answered, (
                f"request {n} with a one-byte queue (msgmnb=1) {describe_reply(reply, 3.0)}"
            )
        srv.set_auto(False)
        clients = []
        for pid in srv.worker_pids:
            os.kill(pid, signal.SIGSTOP)
        try:
            for n in range(3):
                client = srv.connect()
                clients.append(client)
                client.sendall(b"ipc08")
                outcome, took = timed_dispatch(srv, 1.0, 4.0)
                assert took <= 2.0, (
                    f"dispatch(timeout=1) {n} took {took:.2f}s with a full queue and stopped "
                    f"workers (outcome {outcome!r})"
                )
        finally:
            for pid in srv.worker_pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
            for client in clients:
                client.close()

    @pytest.mark.requirement("IPC-09")
    def test_no_object_survives_killed_workers(self, server: StartServer) -> None:
        srv = server(workers=3)
        # Traffic first, so that objects made lazily exist; a proxy that serves nothing
        # (FP-02's failure) is judged on what its setup made, without waiting on clients.
        serves = known_shortfall(srv, SERVED) is None
        for n in range(3 if serves else 0):
            served(srv, f"connection {n}")
        held = srv.hold()[0] if serves else srv.connect()
        with held:
            for index in range(3):
                srv.kill_worker(index)
            srv.set_auto(False)
            try:
                raised = close_quietly(srv)
            except HarnessError as exc:
                raise AssertionError(f"close() after SIGKILL of every worker: {exc}") from None
        left = srv.ipc_objects()
        note = f" (close() raised {raised!r})" if raised else ""
        assert not left, (
            f"after SIGKILL of every worker, close() left IPC objects: {describe_objects(left)}"
            f"{note}"
        )

    @pytest.mark.requirement("IPC-10")
    @needs("served")
    def test_forked_children_leave_objects_alone(self, server: StartServer) -> None:
        srv = server(upto="channels", workers=2, master_setup=atexit._clear)
        before = srv.ipc_objects()
        if not before:
            not_applicable("no IPC object exists after create_socket and open_channels")
        ends = {
            "close": "called close() and exited normally (atexit)",
            "drop": "dropped the proxy, ran gc.collect() and exited normally (atexit)",
        }
        for action, what in ends.items():
            status = srv.request("fork_bystander", action, run_atexit=True)
            after = srv.ipc_objects()
            assert after == before, (
                f"a forked non-worker child that {what} (status {status}) changed the IPC "
                f"objects: {describe_objects(before)} -> {describe_objects(after)}"
            )
        srv.fork_workers()
        for n in range(4):
            reply = srv.request_reply(timeout=3.0)
            assert reply.answered, (
                f"request {n} after the forked children ended {describe_reply(reply, 3)}"
            )

    @pytest.mark.requirement("IPC-10")
    @needs("served")
    def test_worker_exit_leaves_objects_alone(self, server: StartServer) -> None:
        srv = server(workers=3)
        before = srv.ipc_objects()
        if not before:
            not_applicable("no IPC object exists while serving")
        for n in (1, 2):
            served(srv, "an exit request", data=b"exit")
            srv.wait_events("exit", n)
            after = srv.ipc_objects()
            assert after == before, (
                f"after {n} worker(s) called close() and exited, the IPC objects changed: "
                f"{describe_objects(before)} -> {describe_objects(after)}"
            )
        replies = [srv.request_reply(timeout=3.0) for _ in range(6)]
        hanging = [n for n, r in enumerate(replies) if left_hanging(r)]
        assert not hanging, f"requests {hanging} hung after two workers exited"
        assert any(r.answered for r in replies), (
            "no request was served after two workers exited: "
            + "; ".join(f"request {n} {describe_reply(r, 3)}" for n, r in enumerate(replies))
        )
