"""ExecProxy: a program in any language, seen through the proxy contract.

The factory (``ExecFactory``) makes proxies without starting anything; a
proxy starts its program on first use, in the process that uses it, which in
the harness is the forked Python master. From then on every contract call is
a request executed by the program's process that the contract names:

* in the process that started the program (the *owner*), calls go to the
  program's master;
* ``spawn_program_worker(i)`` asks the program's master to fork worker ``i`` and takes
  that worker's control connection; the Python process forked next (the
  harness's worker, here called its *driver*) keeps that connection and
  forwards every call it makes (``enter_worker``, ``accept``, ``close``) to
  program worker ``i``;
* any other forked process reaches nothing: ``close()`` there is a no-op.

Sockets come back as real fds (SCM_RIGHTS), checked against
``/proc/PID/fd`` of the program; their close-on-exec and O_NONBLOCK flags are
read from the program's own ``/proc/PID/fdinfo`` (``RemoteSocket.impl_view``), not
from our copy, whose flags are ours. A connection stays held by the program
worker that accepted it while the driver serves it on its behalf; closing our
copy releases the program's, so the connection ends when the worker is done
with it, and a driver ends as soon as its program worker does.

The harness reaches these processes only through the exec backend
(``adapter/backend.py``), which calls the ``program_*`` methods below.
"""

from __future__ import annotations

import contextlib
import os
import select
import shlex
import shutil
import socket
import threading
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..contract import ProtocolType
from ..harness.errors import WorkerGone
from .procfs import RemoteFdFiller, fd_flags
from .program import Hello, Launch, WorkerLink, default_deadline, probe_isolated, still_holds
from .wire import ProgramDefect, ProgramError


class RemoteSocket(socket.socket):
    """Our copy of a socket the program returned; knows which process holds the original."""

    fdpass_pid: int = 0
    fdpass_fd: int = -1
    fdpass_flags: dict[str, bool] | None = None  # frozen at receipt (a connection)
    fdpass_release: Callable[[], None] | None = None  # run once when our copy is closed

    def close(self) -> None:
        """Close our copy, then have the program release its own (a served connection)."""
        release, self.fdpass_release = self.fdpass_release, None
        super().close()
        if release is not None:
            release()

    def impl_view(self) -> dict[str, Any]:
        """pid, close-on-exec and O_NONBLOCK as the implementation's process has them."""
        flags = self.fdpass_flags
        if flags is None and still_holds(self.fdpass_pid, self.fdpass_fd, self.fileno()):
            flags = fd_flags(self.fdpass_pid, self.fdpass_fd)
        return {"pid": self.fdpass_pid, **(flags or {})}


def _adopt(fd: int, pid: int, remote: int, flags: dict[str, bool] | None) -> RemoteSocket:
    sock = RemoteSocket(fileno=fd)
    sock.fdpass_pid, sock.fdpass_fd, sock.fdpass_flags = pid, remote, flags
    return sock


@dataclass
class _Listener:
    sock: socket.socket
    remote: int
    released: bool = False


@dataclass
class _State:
    """Everything a proxy owns, apart from the proxy, so a finalizer can release it."""

    owner: int
    launch: Launch | None = None
    failed: str | None = None
    listeners: dict[int, _Listener] = field(default_factory=dict)
    links: dict[int, WorkerLink] = field(default_factory=dict)  # spawned, not yet handed over
    spawned: int | None = None  # the worker whose driver the next fork becomes
    driver_pid: int | None = None  # this process drives ``link``
    link: WorkerLink | None = None
    closed: bool = False
    closing: bool = False  # the driver is closing its link itself

    def terminate(self) -> None:
        """Stop the program if this process started it (finalizer; idempotent)."""
        if os.getpid() != self.owner or self.launch is None:
            return
        for link in self.links.values():
            link.chan.close()
        self.links.clear()
        launch, self.launch = self.launch, None
        launch.terminate()


def _watch(link: WorkerLink, state: _State) -> None:
    """End this driver as soon as its program worker ends (killed, crashed): the harness's
    worker and the implementation's worker are one worker, and the connections the driver
    serves on its behalf must end with it, as they would with any worker."""
    fd = link.chan.fileno()

    def run() -> None:
        poller = select.poll()
        poller.register(fd, select.POLLRDHUP)
        while True:
            events = poller.poll()
            if state.closing or link.broken is not None:
                return  # our own doing: the driver reports or ends by itself
            if any(ev & (select.POLLRDHUP | select.POLLHUP | select.POLLERR) for _, ev in events):
                os._exit(0)

    threading.Thread(target=run, name=f"fdpass-watch-{link.index}", daemon=True).start()


class ExecFactory:
    """A zero-argument factory of ExecProxy objects for one program (``exec:COMMAND``).

    Its backend (``backend_for(factory)``) is ``adapter.backend.ExecBackend``.
    """

    def __init__(self, argv: Sequence[str], hello: Hello, deadline: float | None = None) -> None:
        #: pid -> wait status of this factory's program masters that the harness's master
        #: reaped before their Launch could (recorded by the exec backend, read by Launch.end).
        self.reaps: dict[int, int] = {}
        self.argv = tuple(argv)
        self.hello = hello
        self.deadline = default_deadline() if deadline is None else deadline
        self.name = hello.name or os.path.basename(self.argv[0])
        self.__qualname__ = self.name
        self.label = f"exec program {self.name!r}"

    @property
    def language(self) -> str:
        return self.hello.language or "unknown"

    @property
    def protocol(self) -> int:
        return self.hello.protocol

    def __call__(self) -> ExecProxy:
        cls = ExecFdPassingProxy if self.hello.fd_passing else ExecProxy
        return cls(self)

    def __repr__(self) -> str:
        return f"ExecFactory({shlex.join(self.argv)!r})"


def exec_impl(command: str | Sequence[str], deadline: float | None = None) -> ExecFactory:
    """The factory for a program, after one trial start for its hello.

    ``command`` is a shell-like string (split with shlex, never run by a
    shell) or an argv list. Raises ProgramError in one line if the program
    cannot be found, started, or does not complete the handshake.
    """
    argv = shlex.split(command) if isinstance(command, str) else list(command)
    if not argv:
        raise ProgramError("exec: no command given")
    exe = shutil.which(argv[0]) if os.sep not in argv[0] else argv[0]
    if exe is None or not os.path.exists(exe):
        raise ProgramError(f"exec: {argv[0]!r} not found")
    if not os.access(exe, os.X_OK) or os.path.isdir(exe):
        raise ProgramError(f"exec: {exe!r} is not an executable file")
    argv[0] = os.path.abspath(exe)
    seconds = default_deadline() if deadline is None else deadline
    hello = probe_isolated(argv, f"exec program {os.path.basename(argv[0])!r}", seconds)
    return ExecFactory(argv, hello, seconds)


class ExecProxy:
    """A shared-listener proxy implemented by a program (capability "shared-listener")."""

    def __init__(self, factory: ExecFactory) -> None:
        self._factory = factory
        self._state = _State(owner=os.getpid())
        self._finalizer = weakref.finalize(self, _State.terminate, self._state)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {shlex.join(self._factory.argv)!r}>"

    # -- the contract ----------------------------------------------------

    def is_supported(self) -> Any:
        return self._forward("is_supported", {})

    def create_socket(self, port: int, protocol: ProtocolType | str = ProtocolType.TCP) -> Any:
        if self._worker_link() is not None:
            return self._forward("create_socket", {"port": port, "protocol": protocol})
        launch = self._master()
        result, fd = self._on_master("create_socket", {"port": port, "protocol": protocol}, True)
        remote = int(result["fd"])
        sock = _adopt(fd, launch.pid, remote, None)
        self._state.listeners[id(sock)] = _Listener(sock, remote)
        return sock

    def accept(self, listener: socket.socket) -> socket.socket:
        args = {"listener": self._listener_arg(listener)}
        link = self._worker_link()
        if link is None:
            launch = self._master()
            result, fd = self._on_master("accept", args, True)
            return self._adopt_conn(fd, int(result["fd"]), launch.pid, self._on_master)
        try:
            result, fd = link.call("accept", args, want_fd=True, seconds=None)
        except ProgramError:
            if link.broken is not None and "ended during" in link.broken:
                raise WorkerGone(f"{link.who} {link.broken}") from None
            raise

        def release(op: str, args: dict[str, Any], want_fd: bool = False) -> Any:
            assert link is not None
            if link.broken is None and not self._state.closing:
                with contextlib.suppress(WorkerGone):
                    return self._on_link(link, op, args)
            return None

        return self._adopt_conn(fd, int(result["fd"]), link.pid, release)

    def close(self) -> None:
        state = self._state
        link = self._worker_link(adopt=False)
        if link is not None:
            if not state.closed:
                state.closed = True
                defect: ProgramDefect | None = None
                try:
                    link.call("close", {}, seconds=self._factory.deadline)
                except ProgramDefect as exc:
                    defect = exc  # a bug in the worker's close: the implementation's to fix
                except (ProgramError, WorkerGone):
                    pass  # gone: it released everything
                state.closing = True
                link.chan.close()
                if defect is not None:
                    raise defect
            return
        if os.getpid() != state.owner or state.launch is None:
            return  # a forked non-worker, or never started: nothing of ours to release
        try:
            if state.failed is None:
                self._on_master("close", {})
        finally:
            for entry in state.listeners.values():
                entry.sock.close()
                entry.released = True
            for other in state.links.values():
                other.chan.close()
            state.links.clear()
            if state.launch is not None:
                state.launch.release_path()

    # -- what the exec backend asks --------------------------------------

    def program_master_pid(self) -> int:
        """The pid of the program's master (started now if it is not running yet)."""
        return self._master().pid

    def spawn_program_worker(self, index: int) -> int:
        """Have the program's master fork worker ``index``; returns its pid.

        The Python process forked next becomes that worker's driver; call
        ``program_worker_forked(index)`` after that fork.
        """
        launch = self._master()
        result = self._on_master("fork_worker", {"index": index})
        pid = result.get("pid") if isinstance(result, dict) else None
        if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
            raise self._fail(
                ProgramError(f"{launch.who} answered fork_worker with {result!r}, not a pid")
            )
        try:
            link = launch.accept_worker(index, pid, self._factory.deadline)
        except ProgramError as exc:
            raise self._fail(exc) from None
        self._state.links[index] = link
        self._state.spawned = index
        return pid

    def program_worker_forked(self, index: int) -> None:
        """The driver of worker ``index`` exists: drop our copy of its connection."""
        link = self._state.links.pop(index, None)
        if link is not None:
            link.chan.close()
        self._state.spawned = None

    def program_fd_filler(self) -> RemoteFdFiller:
        """A full fd table for the program process this process speaks to."""

        def pid() -> int:
            link = self._worker_link()
            return link.pid if link is not None else self._master().pid

        return RemoteFdFiller(pid)

    # -- machinery -------------------------------------------------------

    def _master(self) -> Launch:
        state = self._state
        if os.getpid() != state.owner:
            raise RuntimeError(
                f"{self._factory.label}: this process (pid {os.getpid()}) neither started the "
                "program nor drives one of its workers"
            )
        if state.failed is not None:
            raise ProgramError(f"{state.failed} (failed earlier)")
        if state.launch is None:
            try:
                state.launch = Launch.start(
                    self._factory.argv,
                    self._factory.label,
                    self._factory.deadline,
                    reaped=self._factory.reaps,
                )
            except ProgramError as exc:
                state.failed = str(exc)
                raise
        return state.launch

    def _on_master(self, op: str, args: dict[str, Any], want_fd: bool = False) -> Any:
        launch = self._master()
        seconds: float | None = self._factory.deadline
        if op == "dispatch":
            timeout = args.get("timeout")
            seconds = None if timeout is None else float(timeout) + self._factory.deadline
        try:
            return launch.call(op, args, want_fd, seconds)
        except ProgramDefect:
            raise  # the program answered: a defect of the call, and the program goes on
        except ProgramError as exc:
            raise self._fail(exc) from None

    def _fail(self, exc: ProgramError) -> ProgramError:
        """Remember the failure; our listener copies go, so nobody waits on a dead program."""
        state = self._state
        state.failed = str(exc)
        if state.launch is not None and state.launch.end() is None:
            state.launch.kill()
        for entry in state.listeners.values():
            entry.sock.close()
        return exc

    def _forward(self, op: str, args: dict[str, Any]) -> Any:
        link = self._worker_link()
        if link is not None:
            return link.call(op, args, seconds=self._factory.deadline)
        return self._on_master(op, args)

    def _worker_link(self, adopt: bool = True) -> WorkerLink | None:
        """The worker connection this process drives, taken over on the first call; None in
        the process that started the program and in forked processes that are no driver."""
        state = self._state
        me = os.getpid()
        if me == state.owner:
            return None
        if state.driver_pid == me:
            return state.link
        link = state.links.get(state.spawned) if state.spawned is not None else None
        if link is None or not adopt:
            return None
        # A freshly forked driver: keep worker ``spawned``'s connection, nothing else.
        for index, other in state.links.items():
            if index != state.spawned:
                other.chan.close()
        if state.launch is not None:
            state.launch.close_local()
        for entry in state.listeners.values():
            entry.sock.close()
        state.links = {}
        state.driver_pid, state.link = me, link
        _watch(link, state)
        return link

    def _listener_arg(self, listener: object) -> int | None:
        """The program's fd for one of our listener copies; a copy we closed in the process
        that started the program is closed (released) in the program too."""
        entry = self._state.listeners.get(id(listener))
        if entry is None:
            return None
        state = self._state
        closed_here = entry.sock.fileno() < 0
        if (
            closed_here
            and not entry.released
            and os.getpid() == state.owner
            and state.failed is None
            and state.launch is not None
        ):
            entry.released = True
            self._on_master("release", {"fd": entry.remote})
        return entry.remote

    def _adopt_conn(self, fd: int, remote: int, pid: int, call: Any) -> socket.socket:
        """Our copy of a connection the program accepted, its flags read in the program.

        The program worker keeps holding the connection (its fd table shows it,
        as a worker serving it would) until our copy is closed: then its copy is
        released too, and the client sees the end of the connection.
        """
        sock = _adopt(fd, pid, remote, fd_flags(pid, remote))
        sock.fdpass_release = lambda: call("release", {"fd": remote})
        return sock

    def _on_link(self, link: WorkerLink, op: str, args: dict[str, Any]) -> Any:
        """A request to the program worker this process drives; WorkerGone once it is gone."""
        try:
            return link.call(op, args, seconds=self._factory.deadline)
        except ProgramError:
            if link.broken is not None and "ended during" in link.broken:
                raise WorkerGone(f"{link.who} {link.broken}") from None
            raise


class ExecFdPassingProxy(ExecProxy):
    """An fd-passing proxy implemented by a program (capability "fd-passing")."""

    def open_channels(self, workers: int) -> None:
        self._forward("open_channels", {"workers": workers})

    def enter_worker(self, index: int) -> None:
        self._forward("enter_worker", {"index": index})

    def dispatch(self, listener: socket.socket, timeout: float | None = None) -> Any:
        args = {"listener": self._listener_arg(listener), "timeout": timeout}
        if self._worker_link() is not None:
            return self._forward("dispatch", args)
        return self._on_master("dispatch", args)
