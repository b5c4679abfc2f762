"""The forked master of the server under test: runs the implementation on request.

The controller drives it step by step over the control channel (construct,
create_socket, open_channels, fork workers, dispatch...), so a suite can stop
at any step, inject a fault, and look at what the implementation left behind.
Between requests an "auto" mode dispatches whenever a listener is readable.
One master can hold several proxy instances, which is how isolation between
instances of one process (FP-13) is observed.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import fcntl
import functools
import gc
import os
import resource
import select
import signal
import socket
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ..contract import check_impl, is_fd_passing
from ..outcomes import MissingMethod, from_implementation
from ..processes import CRASHED, fork_child, wait_pid
from .backends import Backend, InProcessBackend
from .events import EventWriter
from .fdtable import FdTableFiller
from .wire import WireClosed, recv_msg, send_msg
from .worker_role import run_worker


@dataclass
class MasterConfig:
    factory: Callable[[], object]
    events_fd: int
    enter_namespace: bool = False
    master_setup: Callable[[], object] | None = None
    worker_setup: Callable[[int], object] | None = None
    dispatch_timeout: float = 2.0
    backend: Backend = field(default_factory=InProcessBackend)


@dataclass
class Instance:
    proxy: Any
    fd_passing: bool
    listeners: list[socket.socket] = field(default_factory=list)
    workers: dict[int, int] = field(default_factory=dict)  # index -> pid
    auto: bool = False
    # index -> pid of the implementation's worker process: the harness's worker itself,
    # or (the exec adapter) the program worker that the entry of ``workers`` drives.
    impl_workers: dict[int, int] = field(default_factory=dict)


@dataclass(frozen=True)
class ListenerRef:
    """Stands, in a request's arguments, for the instance's latest listener."""


LISTENER = ListenerRef()


@contextlib.contextmanager
def implementation_code() -> Iterator[None]:
    """What escapes from here was raised by the implementation: the proxy's outcome.

    Anything else that fails in this process is the harness's own error, which
    the report must not count against the proxy (``outcomes.is_toolkit_error``).
    """
    try:
        yield
    except BaseException as exc:
        from_implementation(exc)
        raise


def method_of(proxy: object, name: str) -> Callable[..., Any]:
    """The implementation's method ``name``; MissingMethod (not an AttributeError of ours)
    names the requirement that asks for it when the proxy has none."""
    member = getattr(proxy, name, None)
    if not callable(member):
        raise from_implementation(MissingMethod(name))
    call: Callable[..., Any] = member
    return call


def describe_socket(sock: socket.socket, backend: Backend) -> dict[str, Any]:
    """Kernel-level facts about a socket the implementation returned."""
    fd = sock.fileno()
    if fd < 0:
        return {"socket": True, "fd": fd, "closed": True}

    def opt(level: int, name: int | None) -> int | None:
        if name is None:
            return None
        try:
            return sock.getsockopt(level, name)
        except OSError:
            return None

    return {
        "socket": True,
        "fd": fd,
        "closed": False,
        "family": int(sock.family),
        "type": opt(socket.SOL_SOCKET, socket.SO_TYPE),
        "sockname": list(sock.getsockname()),
        "listening": opt(socket.SOL_SOCKET, getattr(socket, "SO_ACCEPTCONN", None)),
        "reuseaddr": opt(socket.SOL_SOCKET, socket.SO_REUSEADDR),
        "reuseport": opt(socket.SOL_SOCKET, getattr(socket, "SO_REUSEPORT", None)),
        "cloexec": bool(fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC),
        "nonblock": bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_NONBLOCK),
        **backend.describe_socket(sock),  # an out-of-process implementation's own view
    }


#: Seconds an auto-dispatch of waiting (``pending``) connections may wait for a free
#: worker: short, so that control requests are answered meanwhile.
PENDING_DISPATCH_TIMEOUT = 0.05


def _pending(instance: Instance) -> bool:
    """Whether the proxy says it holds accepted connections not yet handed out."""
    try:
        value = getattr(instance.proxy, "pending", 0)
    except Exception:  # a broken property is not the harness's business
        return False
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


class Master:
    def __init__(self, cfg: MasterConfig, ctl: socket.socket) -> None:
        self.cfg = cfg
        self.ctl = ctl
        self.instances: list[Instance] = []
        self.exited: dict[int, int] = {}  # pid -> wait status
        self.patches: list[Any] = []
        self.signals: dict[int, int] = {}
        self.backend = cfg.backend
        self.filler: FdTableFiller | None = None  # the fd table of the implementation's master
        self.events = EventWriter(cfg.events_fd, "master", -1)

    # -- requests: the implementation ------------------------------------

    def op_construct(self) -> tuple[int, bool]:
        """A new instance from the factory; returns (instance number, fd_passing)."""
        with implementation_code():
            proxy = self.cfg.factory()
        self.instances.append(Instance(proxy, is_fd_passing(proxy)))
        return len(self.instances) - 1, self.instances[-1].fd_passing

    def op_inspect(self, inst: int = 0) -> dict[str, Any]:
        """The instance's shape (SP-01), judged where it was constructed."""
        proxy = self.instances[inst].proxy
        return {"missing": check_impl(proxy), "identity": id(proxy), "type": type(proxy).__name__}

    def op_call(self, method: str, *args: Any, inst: int = 0, **kwargs: Any) -> object:
        instance = self.instances[inst]
        args = tuple(instance.listeners[-1] if isinstance(a, ListenerRef) else a for a in args)
        call = method_of(instance.proxy, method)
        with implementation_code():
            result = call(*args, **kwargs)
        if method == "create_socket" and isinstance(result, socket.socket):
            instance.listeners.append(result)
        return self._describe(result)

    def _describe(self, value: object) -> object:
        """Sockets can't cross the pipe; their description can."""
        return describe_socket(value, self.backend) if isinstance(value, socket.socket) else value

    def op_accept_closed_listener(self, inst: int = 0) -> object:
        """``accept`` on a listener this process has closed (SP-14)."""
        instance = self.instances[inst]
        listener = instance.listeners[-1]
        listener.close()
        accept = method_of(instance.proxy, "accept")
        with implementation_code():
            return self._describe(accept(listener))

    def op_dispatch_closed_listener(self, timeout: float, inst: int = 0) -> int:
        """``dispatch`` on a listener this process has closed (SP-14, fd-passing proxies).

        An fd-passing proxy's master owns the listener and accepts only inside
        ``dispatch``; calling its ``accept`` directly would be FP-15's out-of-order call.
        """
        instance = self.instances[inst]
        listener = instance.listeners[-1]
        listener.close()
        dispatch = method_of(instance.proxy, "dispatch")
        with implementation_code():
            return int(dispatch(listener, timeout=timeout))

    def op_fork_workers(self, n: int, inst: int = 0) -> list[int]:
        instance = self.instances[inst]
        listener = instance.listeners[-1]
        # The pids returned are the implementation's workers: the harness's own, or the
        # program workers (exec adapter) that the harness's workers drive.
        for index in range(n):
            with self.backend.spawn_worker(instance.proxy, index) as impl_pid:
                body = functools.partial(self._worker_body, instance, index, listener)
                instance.workers[index] = fork_child(body)
            instance.impl_workers[index] = impl_pid(instance.workers[index])
        return list(instance.impl_workers.values())

    def op_impl_pid(self, inst: int = 0) -> int:
        """The pid of the implementation's master: this process, or an exec program's."""
        return self.backend.master_pid(self.instances[inst].proxy)

    def op_dispatch(self, timeout: float | None, inst: int = 0) -> int:
        instance = self.instances[inst]
        dispatch = method_of(instance.proxy, "dispatch")
        with implementation_code():
            return int(dispatch(instance.listeners[-1], timeout=timeout))

    def op_auto(self, on: bool, inst: int = 0) -> None:
        self.instances[inst].auto = on

    # -- requests: faults ------------------------------------------------

    def op_rlimit(self, soft: int) -> tuple[int, int]:
        """Lower RLIMIT_NOFILE of the implementation's master (of the first instance)."""
        pid = self.backend.master_pid(self.instances[0].proxy) if self.instances else os.getpid()
        if pid != os.getpid():
            from ..faults.kernel import set_nofile_limit

            return set_nofile_limit(pid, soft)
        prev = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, prev[1]))
        return prev

    def op_fill(self, keep_free: int) -> int:
        """Fill the fd table of the implementation's master (of the first instance)."""
        if self.filler is None:
            proxy = self.instances[0].proxy if self.instances else None
            self.filler = self.backend.fd_filler(proxy)
        return self.filler.fill(keep_free)

    def op_unfill(self) -> int:
        filler, self.filler = self.filler, None
        return filler.release() if filler is not None else 0

    def op_patch(self, target: str, error: int, after: int, times: int | None) -> None:
        from ..faults.pylevel import PatchedErrno

        patch = PatchedErrno(target, error, after=after, times=times)
        patch.start()
        self.patches.append(patch)

    def op_unpatch(self) -> list[int]:
        injected = []
        while self.patches:
            patch = self.patches.pop()
            patch.stop()
            injected.append(patch.injected)
        return injected

    def op_count_signal(self, sig: int) -> None:
        """Install a handler that only counts, to deliver EINTR without other effect."""
        self.signals[sig] = 0

        def handler(signum: int, frame: object) -> None:
            self.signals[signum] += 1

        signal.signal(sig, handler)

    def op_signal_counts(self) -> dict[int, int]:
        return dict(self.signals)

    def op_fork_bystander(
        self, action: str, inst: int = 0, run_atexit: bool = False, timeout: float = 5.0
    ) -> int:
        """Fork a child that never calls ``enter_worker`` and let it end (IPC-10).

        Such children exist in real servers (a health check, a daemonising
        helper, a worker that failed before ``enter_worker``). ``action`` is
        ``"close"``: the child calls the instance's ``close()``; or ``"drop"``:
        it drops every reference to every proxy and runs ``gc.collect()``, so
        finalizers run. Exceptions from the proxy are ignored: the caller
        judges what the child left behind. With ``run_atexit`` the child then
        runs the atexit handlers registered in this master, as a normal
        interpreter exit would; start the master with
        ``master_setup=atexit._clear`` so that the handlers inherited from the
        pytest process are not among them. Returns the child's exit status
        (minus the signal number if a signal ended it); a child still running
        after ``timeout`` seconds is killed and TimeoutError raised.
        """
        if action not in ("close", "drop"):
            raise ValueError(f"action must be 'close' or 'drop', got {action!r}")
        body = functools.partial(self._bystander_body, action, inst, run_atexit)
        return wait_pid(fork_child(body), timeout)

    def _bystander_body(self, action: str, inst: int, run_atexit: bool) -> int:
        self.ctl.close()  # the controller must see EOF when the master goes
        if action == "close":
            with contextlib.suppress(Exception):
                self.instances[inst].proxy.close()
        else:
            for instance in self.instances:
                instance.proxy = None
                instance.listeners.clear()
            self.instances.clear()
            gc.collect()
        if run_atexit:
            with contextlib.suppress(Exception):
                atexit._run_exitfuncs()
        return 0

    def op_fork_calls(
        self,
        calls: list[tuple[str, list[object]]],
        inst: int = 0,
        timeout: float = 2.0,
        spawn: int | None = None,
    ) -> dict[str, Any]:
        """``calls`` made in order by a child forked from this master (FP-15, FP-16).

        With ``spawn``, the child is spawned as worker ``spawn``: for an
        out-of-process implementation (the exec adapter) the program's master
        forks that worker first, and the child's calls go to it. See
        ``childcalls.fork_calls``.
        """
        from .childcalls import fork_calls

        instance = self.instances[inst]
        listener = instance.listeners[-1] if instance.listeners else None
        with contextlib.ExitStack() as stack:
            impl_of: Callable[[int], int] = lambda pid: pid  # noqa: E731
            if spawn is not None:
                impl_of = stack.enter_context(self.backend.spawn_worker(instance.proxy, spawn))
            return fork_calls(
                instance.proxy,
                listener,
                calls,
                impl_pid=lambda: impl_of(os.getpid()),
                in_child=self.ctl.close,
                timeout=timeout,
            )

    def op_exited(self) -> dict[int, int]:
        self._reap()
        return self._worker_statuses()

    def op_shutdown(self, close_proxy: bool, grace: float) -> dict[int, int]:
        self.op_unfill()
        for instance in self.instances:
            instance.auto = False
            if close_proxy:
                try:
                    instance.proxy.close()
                except Exception as exc:
                    self.events.emit("close-error", type=type(exc).__name__, message=str(exc))
        # Only fd-passing workers can notice the close (EOF); don't wait for the others.
        self._wait_workers(grace if any(i.fd_passing for i in self.instances) else 0.0)
        return self._worker_statuses()

    # -- machinery -------------------------------------------------------

    def _worker_body(self, instance: Instance, index: int, listener: socket.socket) -> int:
        self.ctl.close()  # the controller must see EOF when the master goes
        events = EventWriter(self.cfg.events_fd, "worker", index)
        try:
            return run_worker(
                instance.proxy,
                index,
                listener,
                instance.fd_passing,
                events,
                self.cfg.worker_setup,
                self.backend,
            )
        except BaseException as exc:
            events.emit(
                "crash", type=type(exc).__name__, message=str(exc), traceback=traceback.format_exc()
            )
            return CRASHED

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self.exited[pid] = status
            self.backend.child_reaped(pid, status)

    def _worker_statuses(self) -> dict[int, int]:
        """pid -> wait status of the children reaped, keyed by the implementation's worker
        pids (the only ones the suites know). An exec program's worker is a child of the
        program, out of our reach: the status given for it is that of the harness worker
        that drove it, which leaves when its program worker does (0 when it said why)."""
        impl = {
            pid: inst.impl_workers.get(index, pid)
            for inst in self.instances
            for index, pid in inst.workers.items()
        }
        return {impl.get(pid, pid): status for pid, status in self.exited.items()}

    def _live_workers(self) -> list[int]:
        self._reap()
        pids = [p for inst in self.instances for p in inst.workers.values()]
        return [p for p in pids if p not in self.exited]

    def _wait_workers(self, grace: float) -> None:
        """Workers of fd-passing proxies leave on EOF; the others are told to."""
        for sig, wait in ((None, grace), (signal.SIGTERM, 1.0), (signal.SIGKILL, 2.0)):
            live = self._live_workers()
            if not live:
                return
            for pid in live:
                if sig is not None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, sig)
            end = time.monotonic() + wait
            while self._live_workers() and time.monotonic() < end:
                time.sleep(0.005)  # polling waitpid with a deadline; there is no timed wait

    def _auto_dispatch(self, inst: int, timeout: float | None = None) -> None:
        try:
            self.op_dispatch(self.cfg.dispatch_timeout if timeout is None else timeout, inst)
        except TimeoutError:
            pass
        except Exception as exc:
            self.events.emit(
                "dispatch-error",
                type=type(exc).__name__,
                errno=getattr(exc, "errno", None),
                message=str(exc),
            )

    def serve(self) -> int:
        while True:
            watch: dict[Any, int] = {self.ctl: -1}
            for n, instance in enumerate(self.instances):
                if instance.auto and instance.listeners and instance.listeners[-1].fileno() >= 0:
                    watch[instance.listeners[-1]] = n
            # A proxy holding accepted connections (``pending``, bounded backpressure) moves
            # them only inside dispatch, so it is called again even with nothing to accept.
            waiting = [n for n in set(watch.values()) if n >= 0 and _pending(self.instances[n])]
            try:
                ready = select.select(list(watch), [], [], 0.0 if waiting else 0.2)[0]
            except OSError as exc:  # a listener closed under us: stop auto mode
                self.events.emit("select-error", errno=exc.errno, message=str(exc))
                for instance in self.instances:
                    instance.auto = False
                continue
            self._reap()
            for sock in ready:
                if sock is not self.ctl:
                    self._auto_dispatch(watch[sock])
            for n in waiting:
                if self.instances[n].auto and _pending(self.instances[n]):
                    self._auto_dispatch(n, PENDING_DISPATCH_TIMEOUT)
            if self.ctl in ready and not self._handle_request():
                return 0

    def _handle_request(self) -> bool:
        try:
            op, args, kwargs = recv_msg(self.ctl, timeout=5.0)
        except WireClosed:
            self.op_shutdown(True, 1.0)
            return False
        try:
            value = getattr(self, "op_" + op)(*args, **kwargs)
            reply: tuple[str, object, str] = ("ok", value, "")
        except BaseException as exc:
            reply = ("error", exc, traceback.format_exc())
        send_msg(self.ctl, reply)
        return bool(op != "shutdown")


def run_master(cfg: MasterConfig, ctl: socket.socket) -> int:
    if cfg.enter_namespace:
        from .namespace import enter_new_ipc_namespace

        enter_new_ipc_namespace()
    if cfg.master_setup is not None:
        cfg.master_setup()
    master = Master(cfg, ctl)
    send_msg(ctl, ("ok", os.getpid(), ""))
    try:
        return master.serve()
    except OSError as exc:
        if exc.errno == errno.EPIPE:
            return 0
        raise
