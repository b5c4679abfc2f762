"""The server under test, run outside the pytest process and driven from it.

``ProxyServer`` forks a master that runs the implementation; the master forks
the workers. Clients connect from here, faults are applied from here (signals,
RLIMIT_NOFILE, ipcrm) or inside the master on request, and evidence is read
from the kernel: fd tables through /proc, IPC objects through the real ``ipcs``
run inside the server's own IPC namespace where Linux allows it. Nothing here
waits without a deadline; a stuck step fails with the step and pid named.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ..contract import ProtocolType
from ..leaks.fds import FdInfo, fd_inventory
from ..leaks.ipcs import IpcObject, list_ipc_objects, parse_ipcs, remove_ipc_object
from ..outcomes import not_applicable
from ..processes import describe_status, fork_child, has_ended, kill_tree
from . import namespace
from .backends import backend_for
from .errors import HarnessError as HarnessError  # its home for the suites' imports
from .events import EventReader
from .isolation import global_ipc_lock
from .master_role import MasterConfig, run_master
from .wire import WireClosed, WireTimeout, recv_msg, send_msg
from .worker_role import HOLD


class RemoteError(Exception):
    """An exception in the master that could not be re-raised as itself."""


@dataclass
class Reply:
    """What a worker answered (if anything) and how the connection ended."""

    answered: bool
    end: str  # "eof" | "reset" | "timeout" | "refused"
    pid: int | None = None
    index: int | None = None
    peer: tuple[str, int] | None = None
    local: tuple[str, int] | None = None
    cloexec: bool | None = None
    nonblock: bool | None = None
    data: str = ""

    @classmethod
    def parse(cls, raw: bytes, end: str) -> Reply:
        line = raw.split(b"\n", 1)[0]
        if not line:
            return cls(False, end)
        info = json.loads(line)
        return cls(
            True,
            end,
            info["pid"],
            info["index"],
            (info["peer"][0], info["peer"][1]),
            (info["local"][0], info["local"][1]),
            info["cloexec"],
            info["nonblock"],
            info["data"],
        )


@dataclass
class ShutdownReport:
    master_status: int | None
    worker_statuses: dict[int, int]
    ipc_left: list[IpcObject]
    processes_left: list[int]


@dataclass
class ServerOptions:
    workers: int = 2
    port: int = 0
    protocol: ProtocolType | str = ProtocolType.TCP
    namespace: bool | None = None  # None: use an IPC namespace where available
    master_setup: Callable[[], object] | None = None
    worker_setup: Callable[[int], object] | None = None
    step_timeout: float = 10.0
    lock_timeout: float = 300.0
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class InstanceInfo:
    """One proxy instance in the master: its listener and its workers."""

    number: int
    fd_passing: bool
    port: int | None = None
    listener: dict[str, Any] = field(default_factory=dict)
    worker_pids: list[int] = field(default_factory=list)
    impl_master: int | None = None  # an exec: implementation's master process


#: Master operations that act on Python code inside the harness's master; for an exec:
#: implementation that code is not the implementation, so they do not apply.
PYTHON_ONLY_OPS = {
    "patch": "for an exec: implementation: the python fault layer patches Python "
    "callables in the harness's master, and the implementation is a separate program",
    "count_signal": "not checked for an exec: implementation: a signal handler installed in "
    "the harness's master cannot make the program's own system calls fail with EINTR",
}

#: Why a master dies of SIGPIPE, and the fix (checked: /work/shared/facts.md).
SIGPIPE_PITFALL = (
    "a send to a dead worker raised SIGPIPE: every send on a channel needs MSG_NOSIGNAL "
    "(in Python, socket.send_fds() drops its flags argument, CPython gh-107898: call "
    "sock.sendmsg(buffers, [(SOL_SOCKET, SCM_RIGHTS, fds)], socket.MSG_NOSIGNAL) instead)"
)

#: Seconds the fixture's teardown lets fd-passing workers leave on EOF before SIGTERM
#: (checks that judge how workers end call ``shutdown`` with its own grace).
TEARDOWN_GRACE = 0.5

#: Steps of ``ProxyServer.start``, in order; ``upto`` stops after one of them.
STEPS = ("constructed", "listening", "channels", "serving")


class ProxyServer:
    def __init__(self, factory: Callable[[], object], options: ServerOptions | None = None) -> None:
        self.factory = factory
        self.opts = options or ServerOptions()
        use_ns = self.opts.namespace
        self.isolation = (
            "ipc-namespace"
            if (namespace.IPC_NAMESPACES if use_ns is None else use_ns)
            else "global-ipcs+lock"
        )
        self._master_pid: int | None = None
        #: How the harness reaches the implementation's processes, chosen once.
        self.backend = backend_for(factory)
        #: The implementation is a program behind the exec adapter: its own processes,
        #: not the harness's, are the master and the workers that the evidence is read from.
        self.exec_impl = self.backend.out_of_process
        self.instances: list[InstanceInfo] = []
        self.events: EventReader
        self._ctl: socket.socket | None = None
        self._ns: namespace.NamespaceHandle | None = None
        self._lock: contextlib.ExitStack | None = None
        self._ipc_before: set[tuple[str, int]] = set()
        self._closed = False
        self._master_status: int | None = None
        self._last = "start"

    # -- lifecycle -------------------------------------------------------

    def start(self, upto: str = "serving") -> ProxyServer:
        if upto not in STEPS:
            raise ValueError(f"upto must be one of {STEPS}, got {upto!r}")
        if self.isolation != "ipc-namespace":
            self._lock = contextlib.ExitStack()
            self._lock.enter_context(global_ipc_lock(self.opts.lock_timeout))
            self._ipc_before = {(o.kind, o.id) for o in list_ipc_objects()}
        ctl, child_ctl = socket.socketpair()
        r, w = os.pipe()
        os.set_blocking(w, False)
        cfg = MasterConfig(
            factory=self.factory,
            events_fd=w,
            enter_namespace=self.isolation == "ipc-namespace",
            master_setup=self.opts.master_setup,
            worker_setup=self.opts.worker_setup,
            backend=self.backend,
        )

        def body() -> int:
            ctl.close()
            os.close(r)
            return run_master(cfg, child_ctl)

        self._master_pid = fork_child(body, new_group=True)
        child_ctl.close()
        os.close(w)
        self._ctl = ctl
        self.events = EventReader(r)
        self._receive("start")
        if self.isolation == "ipc-namespace":
            self._ns = namespace.NamespaceHandle.from_pid(self._master_pid)
        self.add_instance(upto)
        return self

    def add_instance(self, upto: str = "serving") -> InstanceInfo:
        """Construct an instance in the master and bring it up to step ``upto``."""
        number, fd_passing = self.request("construct")
        info = InstanceInfo(number, bool(fd_passing))
        self.instances.append(info)
        if self.exec_impl:  # the program starts here, so evidence has its process from now on
            info.impl_master = int(self.request("impl_pid", inst=number))
        if upto != "constructed":
            self.create_socket(inst=number)
        if upto in ("channels", "serving") and info.fd_passing:
            self.call("open_channels", self.opts.workers, inst=number)
        if upto == "serving":
            self.fork_workers(inst=number)
        return info

    def create_socket(self, port: int | None = None, inst: int = 0) -> dict[str, Any]:
        port = self.opts.port if port is None else port
        desc: dict[str, Any] = self.call("create_socket", port, self.opts.protocol, inst=inst)
        info = self.instances[inst]
        info.listener, info.port = desc, desc["sockname"][1]
        return desc

    def fork_workers(self, inst: int = 0) -> None:
        before = len([e for e in self.events.events if e.kind == "ready"])
        info = self.instances[inst]
        info.worker_pids = list(self.request("fork_workers", self.opts.workers, inst=inst))
        if info.fd_passing:
            self.request("auto", True, inst=inst)
        self.wait_events("ready", before + self.opts.workers)

    # Instance 0, the one most tests need, at attribute distance.
    @property
    def master_pid(self) -> int | None:
        """The implementation's master: the harness's forked master, or an exec program's."""
        if self.exec_impl and self.instances:
            return self.instances[0].impl_master
        return self._master_pid

    def impl_pids(self, inst: int = 0) -> dict[str, Any]:
        """The processes of instance ``inst`` that the evidence is read from:
        ``{"master": pid, "workers": [pids]}`` (for an exec: implementation, the program's)."""
        info = self.instances[inst]
        master = info.impl_master if self.exec_impl else self._master_pid
        return {"master": master, "workers": list(info.worker_pids)}

    @property
    def fd_passing(self) -> bool:
        return self.instances[0].fd_passing

    @property
    def port(self) -> int | None:
        return self.instances[0].port if self.instances else None

    @property
    def worker_pids(self) -> list[int]:
        return self.instances[0].worker_pids if self.instances else []

    def shutdown(self, close_proxy: bool = True, grace: float = 2.0) -> ShutdownReport:
        """Stop the master (closing the proxy), reap everything, report what remains."""
        statuses: dict[int, int] = {}
        if self._ctl is not None and self._master_alive():
            with contextlib.suppress(HarnessError, WireClosed, OSError):
                statuses = dict(self.request("shutdown", close_proxy, grace, timeout=grace + 5.0))
        self._reap_master(deadline=3.0)
        left = kill_tree(self._group_pids(), deadline=3.0)
        return ShutdownReport(self._master_status, statuses, self.ipc_objects(), left)

    def close(self) -> list[str]:
        """Idempotent teardown: nothing of the server survives; returns what had to be cleaned."""
        if self._closed:
            return []
        self._closed = True
        cleaned: list[str] = []
        try:
            # Teardown: nothing judges how the workers end here, so the grace before
            # SIGTERM is short (a worker never sent EOF would cost the whole grace).
            report = self.shutdown(grace=TEARDOWN_GRACE)
            cleaned += [f"process {pid} killed" for pid in report.processes_left]
            for obj in report.ipc_left:
                cleaned.append(f"{obj.describe()} removed")
                self._remove_ipc(obj)
        finally:
            if self._ctl is not None:
                self._ctl.close()
            with contextlib.suppress(OSError):
                os.close(self.events.fd)
            if self._ns is not None:
                self._ns.close()  # the namespace, and whatever is left in it, vanishes
            if self._lock is not None:
                self._lock.close()
        return cleaned

    def __enter__(self) -> ProxyServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- talking to the master ------------------------------------------

    def request(self, op: str, *args: Any, timeout: float | None = None, **kwargs: Any) -> Any:
        """Run a master operation; re-raise its exception here, remote traceback attached."""
        if self._ctl is None:
            raise HarnessError("fdpass_proxy_server: not started")
        if self.exec_impl and op in PYTHON_ONLY_OPS:
            if op == "patch":
                not_applicable(PYTHON_ONLY_OPS[op])
            import pytest

            pytest.skip(PYTHON_ONLY_OPS[op])
        self._last = op
        send_msg(self._ctl, (op, args, kwargs))
        return self._receive(op, timeout)

    def _receive(self, op: str, timeout: float | None = None) -> Any:
        assert self._ctl is not None
        wait = self.opts.step_timeout if timeout is None else timeout
        try:
            status, value, tb = recv_msg(self._ctl, wait)
        except WireTimeout:
            raise HarnessError(
                f"fdpass_proxy_server: master pid {self._master_pid} did not finish {op!r} within "
                f"{wait}s (the implementation hangs in this step)"
            ) from None
        except WireClosed:
            self._reap_master(deadline=1.0)
            raise HarnessError(
                f"fdpass_proxy_server: master pid {self._master_pid} exited during {op!r} "
                f"(status {self._describe_status()}){self._crash_note()}{self._pitfall()}"
            ) from None
        if status == "ok":
            return value
        if isinstance(value, BaseException):
            if hasattr(value, "add_note"):
                value.add_note(f"raised in the server's master (pid {self._master_pid}):\n{tb}")
            raise value
        raise RemoteError(f"{op}: {value}")

    def call(self, method: str, *args: Any, timeout: float | None = None, **kwargs: Any) -> Any:
        """Call a contract method of the implementation in the master process."""
        return self.request("call", method, *args, timeout=timeout, **kwargs)

    def dispatch(self, timeout: float | None = 2.0, inst: int = 0) -> int:
        """One manual dispatch (auto mode must be off); the deadline covers a hang."""
        wait = self.opts.step_timeout + (timeout or 0.0)
        return int(self.request("dispatch", timeout, inst=inst, timeout=wait))

    def set_auto(self, on: bool, inst: int = 0) -> None:
        self.request("auto", on, inst=inst)

    # -- clients ---------------------------------------------------------

    def connect(self, timeout: float = 5.0, inst: int = 0) -> socket.socket:
        port = self.instances[inst].port if self.instances else None
        if port is None:
            raise HarnessError("fdpass_proxy_server: no listener yet")
        return socket.create_connection(("127.0.0.1", port), timeout=timeout)

    def request_reply(self, data: bytes = b"ping", timeout: float = 5.0, inst: int = 0) -> Reply:
        """Connect, send ``data``, read the worker's answer and the connection's end."""
        try:
            sock = self.connect(timeout, inst)
        except ConnectionRefusedError:
            return Reply(False, "refused")
        with sock:
            reply = read_reply(sock, data, timeout)
        self.events.drain(0.0)  # keep the event pipe from filling over many requests
        return reply

    def hold(self, timeout: float = 5.0, inst: int = 0) -> tuple[socket.socket, Reply]:
        """A connection that a worker keeps open (busy) until the socket is closed here."""
        sock = self.connect(timeout, inst)
        sock.sendall(HOLD)
        raw = _read_line(sock, timeout)
        return sock, Reply.parse(raw, "open" if raw else "eof")

    # -- faults and evidence ---------------------------------------------

    def worker_pid(self, index: int) -> int:
        return self.worker_pids[index]

    def kill_worker(
        self, index: int, sig: int = signal.SIGKILL, wait: float = 5.0, inst: int = 0
    ) -> None:
        pid = self.instances[inst].worker_pids[index]
        try:
            os.kill(pid, sig)
        except ProcessLookupError:  # already gone (and reaped): what the caller wanted
            return
        if sig in (signal.SIGKILL, signal.SIGTERM):
            deadline = time.monotonic() + wait
            while not has_ended(pid):
                if time.monotonic() > deadline:
                    raise HarnessError(
                        f"fdpass_proxy_server: worker {index} (pid {pid}) survived {sig}"
                    )
                time.sleep(0.002)

    def set_nofile(self, who: str | int, soft: int) -> tuple[int, int]:
        """Lower RLIMIT_NOFILE of the master ("master") or of worker ``who``."""
        if who == "master":
            soft_prev, hard_prev = self.request("rlimit", soft)
            return int(soft_prev), int(hard_prev)
        from ..faults.kernel import set_nofile_limit

        return set_nofile_limit(self.worker_pids[int(who)], soft)

    def fds(self, who: str | int = "master") -> list[FdInfo]:
        pid = self.master_pid if who == "master" else self.worker_pids[int(who)]
        assert pid is not None
        return fd_inventory(pid)

    def ipc_objects(self) -> list[IpcObject]:
        """The implementation's IPC objects: all of the namespace's, or new global ones."""
        if self._ns is not None:
            return parse_ipcs(self._ns.ipcs_text())
        return [o for o in list_ipc_objects() if (o.kind, o.id) not in self._ipc_before]

    def remove_queue(self) -> list[IpcObject]:
        """Remove the implementation's queues with the real ``ipcrm``, from outside."""
        queues = [o for o in self.ipc_objects() if o.kind == "queue"]
        for q in queues:
            self._remove_ipc(q)
        return queues

    def set_ipc_limit(self, name: str, value: int) -> None:
        if self._ns is None:
            raise HarnessError("kernel IPC limits need the server's own IPC namespace")
        self._ns.set_limit(name, value)

    def wait_events(self, kind: str, count: int = 1, timeout: float | None = None) -> list[Any]:
        """Wait until ``count`` events of ``kind`` arrived; a clear failure otherwise.

        A crash ends the wait only if it comes from a process that had not yet sent
        ``kind``: a worker that was ready and then crashed in ``accept`` does not
        make the readiness of the others, or evidence gathered before, untrue.
        """
        wait = self.opts.step_timeout if timeout is None else timeout
        deadline = time.monotonic() + wait
        while True:
            found = [e for e in self.events.events if e.kind == kind]
            if len(found) >= count:
                return found
            done = {e.pid for e in found}
            crash = self.crash_report(exclude=done)
            if crash:
                raise HarnessError(f"fdpass_proxy_server: {crash}")
            if time.monotonic() > deadline:
                raise HarnessError(
                    f"fdpass_proxy_server: waited {wait}s for {count} {kind!r} event(s), got "
                    f"{len(found)}; {self.events_seen()}"
                )
            self.events.drain(0.05)

    def events_seen(self) -> str:
        """What the processes reported, compactly: the evidence of a wait that failed."""
        counts: dict[str, int] = {}
        for e in self.events.events:
            who = "master" if e.role == "master" else f"worker {e.index}"
            why = e.detail.get("errno")
            label = f"{who} {e.kind}" + (f" (errno {why})" if why else "")
            counts[label] = counts.get(label, 0) + 1
        if not counts:
            return "no event from any process"
        return "seen: " + ", ".join(f"{k} x{n}" if n > 1 else k for k, n in counts.items())

    def crash_report(self, exclude: set[int] | None = None, traceback: bool = True) -> str:
        """The first crash of a harness process (``worker 0 (pid N) crashed: ...``), or ''."""
        self.events.drain(0.0)
        for e in self.events.events:
            if e.kind == "crash" and e.pid not in (exclude or set()):
                d = e.detail
                text = f"{e.role} {e.index} (pid {e.pid}) crashed: {d.get('type')}: "
                text += str(d.get("message"))
                return text + (f"\n{d.get('traceback', '')}" if traceback else "")
        return ""

    # -- internals -------------------------------------------------------

    def _remove_ipc(self, obj: IpcObject) -> None:
        if self._ns is not None:
            flag = {"queue": "-q", "shm": "-m", "sem": "-s"}[obj.kind]
            self._ns.run(["ipcrm", flag, str(obj.id)], timeout=10.0)
        else:
            remove_ipc_object(obj)

    def _master_alive(self) -> bool:
        return (
            self._master_pid is not None
            and self._master_status is None
            and not has_ended(self._master_pid)
        )

    def _reap_master(self, deadline: float) -> None:
        if self._master_pid is None or self._master_status is not None:
            return
        end = time.monotonic() + deadline
        while True:
            pid, status = os.waitpid(self._master_pid, os.WNOHANG)
            if pid:
                self._master_status = status
                return
            if time.monotonic() > end:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self._master_pid, signal.SIGKILL)
                _, self._master_status = os.waitpid(self._master_pid, 0)
                return
            time.sleep(0.002)

    def _group_pids(self) -> list[int]:
        everyone = [p for info in self.instances for p in info.worker_pids]
        pids = [p for p in everyone if not has_ended(p)]
        if self._master_pid is not None and self._master_status is None:
            pids.append(self._master_pid)
        impl = [i.impl_master for i in self.instances if i.impl_master is not None]
        pids += [p for p in impl if not has_ended(p)]
        return pids

    def _describe_status(self) -> str:
        s = self._master_status
        return "unknown" if s is None else describe_status(s)

    def _pitfall(self) -> str:
        """A known cause of this death, when the status points at one."""
        s = self._master_status
        if s is not None and os.WIFSIGNALED(s) and os.WTERMSIG(s) == signal.SIGPIPE:
            return f"; {SIGPIPE_PITFALL}"
        return ""

    def _crash_note(self) -> str:
        self.events.drain()
        crash = [e for e in self.events.events if e.kind == "crash"]
        return f"; {crash[0].detail.get('message')}" if crash else ""


#: Seconds to wait for the end of a connection once its answer is in. The echo
#: worker closes right after answering, so the end follows at once; a longer wait
#: only means another process keeps a copy (SP-11), and waiting the full timeout
#: for it made every request to such a proxy cost that timeout.
EOF_GRACE = 1.0


def read_reply(
    sock: socket.socket, data: bytes, timeout: float, eof_grace: float = EOF_GRACE
) -> Reply:
    """Send a request and read until the worker closes: answered or not, and how it ended.

    ``eof_grace=0`` stops at the answer (end ``"open"``), for checks of who
    serves that must not wait on an end only SP-11 judges.
    """
    chunks: list[bytes] = []
    end = "eof"
    deadline = time.monotonic() + timeout
    sock.settimeout(max(timeout, 1e-6))
    try:
        sock.sendall(data)
        while chunk := sock.recv(65536):
            chunks.append(chunk)
            if b"\n" in chunk:  # answered: the end is due now
                if eof_grace <= 0:
                    end = "open"
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError
                sock.settimeout(min(left, eof_grace))
    except (BrokenPipeError, ConnectionResetError):
        end = "reset"
    except TimeoutError:
        end = "timeout"
    return Reply.parse(b"".join(chunks), end)


def _read_line(sock: socket.socket, timeout: float) -> bytes:
    sock.settimeout(timeout)
    buf = b""
    with contextlib.suppress(TimeoutError, ConnectionResetError):
        while b"\n" not in buf:
            chunk = sock.recv(4096)
            if not chunk:
                break
            buf += chunk
    return buf


@contextlib.contextmanager
def running(factory: Callable[[], object], **options: Any) -> Iterator[ProxyServer]:
    server = ProxyServer(factory, ServerOptions(**options))
    try:
        yield server.start()
    finally:
        server.close()
