"""Fork helpers for the tests of the reference proxies (used through tests/conftest.py's ``lab``).

Everything here is real: workers are ``fork()``ed children of the test process
(which plays the master), connections are loopback TCP, queues are System V
queues observed with the real ``ipcs``. The ``lab`` fixture hands out every
resource a test needs and takes all of it back at teardown, also when the test
failed: it closes proxies and clients, kills and reaps workers and forked
children, and ``ipcrm``s any queue id it saw created that is still listed.

The worker loop (``Workers``): ``enter_worker(i)`` for an fd-passing proxy,
then ``conn = proxy.accept(listener)`` over and over; each request is answered
with ``<pid>\\n`` and the connection is closed, except ``hold`` (answered, then
kept open until the client closes) and ``info`` (answered with a JSON line that
describes the received socket). A worker leaves with ``os._exit(0)`` on
``EOFError`` and with ``os._exit(70)`` on anything else.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import json
import os
import resource
import select
import signal
import socket
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeAlias, TypeVar

import pytest

from fdpass_conformance.harness import namespace
from fdpass_conformance.leaks import fds
from fdpass_conformance.leaks._procnet import unix_table
from fdpass_conformance.leaks.ipcs import list_ipc_objects, queue_senders, remove_ipc_object
from fdpass_conformance.processes import (
    CRASHED,
    exit_code,
    fork_child,
    kill_tree,
    signal_quietly,
    wait_status,
)
from reference import ForkSharedProxy, MasterProxy, ReusePortProxy
from reference.shared_listener import SharedListenerProxy

HOST = "127.0.0.1"
#: Exit code of a worker or child that left through an unexpected exception.
EXIT_CRASH = CRASHED

Proxy: TypeAlias = "SharedListenerProxy | MasterProxy"
P = TypeVar("P", bound="SharedListenerProxy | MasterProxy")
ProxyClass: TypeAlias = "type[SharedListenerProxy] | type[MasterProxy]"
#: The three reference proxies, for parametrize (with IDS as ids).
PROXIES: list[ProxyClass] = [ForkSharedProxy, ReusePortProxy, MasterProxy]
IDS = [cls.__name__ for cls in PROXIES]
#: ``note(key, value)``: a forked child reports a value to the test at once.
Note: TypeAlias = Callable[[str, Any], None]


# -- observing processes and the kernel ------------------------------------


def fd_count(pid: int | None = None) -> int:
    """Open fds of ``pid`` (default: this process), counted by the toolkit's leak checker."""
    return fds.fd_count(os.getpid() if pid is None else pid)


def socket_inodes(pid: int | None = None) -> set[int]:
    """Inodes of every socket that process ``pid`` (default: this one) holds."""
    inventory = fds.fd_inventory(os.getpid() if pid is None else pid)
    return {
        int(i.target[len("socket:[") : -1]) for i in inventory if i.target.startswith("socket:[")
    }


def unix_inodes() -> set[int]:
    """Inodes of every AF_UNIX socket in this network namespace."""
    return set(unix_table())


def inode_of(sock: socket.socket) -> int:
    return os.fstat(sock.fileno()).st_ino


@dataclass(frozen=True)
class QueueRow:
    """One queue as ``ipcs -q`` prints it (key and perms as printed: ``0x00000000``, ``600``)."""

    key: str
    msqid: int
    owner: str
    perms: str
    messages: int


def ipcs_queues() -> dict[int, QueueRow]:
    """The message queues ``ipcs`` lists (in this process's IPC namespace)."""
    return {
        obj.id: QueueRow(f"0x{obj.key:08x}", obj.id, obj.owner, f"{obj.mode:o}", obj.messages or 0)
        for obj in list_ipc_objects()
        if obj.kind == "queue"
    }


def queue_messages(qid: int) -> int | None:
    """Messages waiting in queue ``qid`` (idle tokens), None if ipcs does not list it."""
    row = ipcs_queues().get(qid)
    return None if row is None else row.messages


def queue_last_sender(qid: int) -> int | None:
    """lspid of queue ``qid`` from ``ipcs -q -p``: the pid of the last msgsnd (0: none yet)."""
    return queue_senders().get(qid)


def queue_id(proxy: object) -> int | None:
    """The id of the reference MasterProxy's queue (its private attribute), if any."""
    queue = getattr(proxy, "_queue", None)
    return None if queue is None else int(queue.id)


def readable(fd: int, timeout: float) -> bool:
    """poll(), not select(): fd numbers may exceed FD_SETSIZE in these tests."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(max(0, int(timeout * 1000))))


def wait_for(predicate: Callable[[], bool], timeout: float, interval: float = 0.005) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


@contextlib.contextmanager
def private_ipc_namespace() -> Iterator[None]:
    """Run the calling thread (and what it forks or spawns) in a new IPC namespace.

    The original namespace is re-entered with setns() on exit; call it around
    everything that creates or removes queues, so that no queue id of the
    private namespace is ever used in the original one. Plain
    ``unshare(CLONE_NEWIPC)``, not ``namespace.enter_new_ipc_namespace``: the
    test process has threads, and only this form can be undone.
    """
    original = os.open("/proc/thread-self/ns/ipc", os.O_RDONLY | os.O_CLOEXEC)
    try:
        namespace.unshare(namespace.CLONE_NEWIPC)
        try:
            yield
        finally:
            namespace.setns(original, namespace.CLONE_NEWIPC)
    finally:
        os.close(original)


@contextlib.contextmanager
def full_fd_table(free: int) -> Iterator[None]:
    """Lower RLIMIT_NOFILE and fill the table so that exactly ``free`` fd numbers are left.

    Only for forked children: it changes the whole process's fd table.
    """
    used = [int(name) for name in os.listdir("/proc/self/fd")]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(used) + 1 + free, hard))
    fillers: list[int] = []
    try:
        while True:
            try:
                fillers.append(os.open("/dev/null", os.O_RDONLY))
            except OSError as exc:
                if exc.errno != errno.EMFILE:
                    raise
                break
        fillers.sort()
        fillers, release = fillers[: len(fillers) - free], fillers[len(fillers) - free :]
        for fd in release:
            os.close(fd)
        yield
    finally:
        for fd in fillers:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# -- clients ----------------------------------------------------------------


def read_line(conn: socket.socket, timeout: float = 5.0) -> bytes:
    """One ``\\n``-terminated reply; AssertionError if the peer closes before it."""
    conn.settimeout(timeout)
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = conn.recv(4096)
        if not chunk:
            raise AssertionError(f"connection closed before a full reply (got {buf!r})")
        buf += chunk
    return buf[:-1]


def expect_eof(conn: socket.socket, timeout: float = 3.0) -> str:
    """What the client sees next: ``eof``, ``reset``, ``data`` or ``hang`` (no answer)."""
    conn.settimeout(timeout)
    try:
        data = conn.recv(64)
    except ConnectionResetError:
        return "reset"
    except TimeoutError:
        return "hang"
    return "eof" if data == b"" else "data"


# -- workers ----------------------------------------------------------------


def _serve(conn: socket.socket) -> None:
    data = conn.recv(64)
    if data == b"info":
        fd = conn.fileno()
        info = {
            "pid": os.getpid(),
            "inheritable": os.get_inheritable(fd),
            "blocking": conn.getblocking(),
            "o_nonblock": bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_NONBLOCK),
            "family": int(conn.family),
            "type": int(conn.type),
            "sockname": list(conn.getsockname()),
            "peername": list(conn.getpeername()),
        }
        conn.sendall(json.dumps(info).encode() + b"\n")
    elif data == b"hold":
        conn.sendall(f"{os.getpid()}\n".encode())
        while conn.recv(64):
            pass
    elif data:
        conn.sendall(f"{os.getpid()}\n".encode())


def _worker_body(
    proxy: Proxy,
    listener: socket.socket,
    index: int,
    ready: tuple[int, int],
    also_close: Iterable[Proxy],
) -> int:
    os.close(ready[0])
    for other in also_close:
        other.close()
    if isinstance(proxy, MasterProxy):
        proxy.enter_worker(index)
    os.write(ready[1], b".")
    os.close(ready[1])
    while True:
        try:
            conn = proxy.accept(listener)
        except EOFError:
            return 0
        with conn, contextlib.suppress(OSError):
            _serve(conn)


@dataclass
class Workers:
    """Forked workers of one proxy; ``pids[i]`` is worker ``i``."""

    pids: list[int]
    fd_passing: bool
    statuses: dict[int, int] = field(default_factory=dict)

    def reap(self, index: int, timeout: float) -> int | None:
        """The wait status of worker ``index`` once it exited, None if still running."""
        pid = self.pids[index]
        if pid not in self.statuses:
            try:
                self.statuses[pid] = wait_status(pid, timeout, kill=False)
            except ChildProcessError:
                self.statuses[pid] = -1
            except TimeoutError:
                return None
        return self.statuses[pid]

    def kill(self, index: int) -> int | None:
        """SIGKILL worker ``index`` and reap it."""
        if self.pids[index] not in self.statuses:
            signal_quietly(self.pids[index], signal.SIGKILL)
        return self.reap(index, 5.0)

    def wait_all(self, timeout: float) -> dict[int, int]:
        """Statuses of the workers that exited within ``timeout`` (pid -> wait status)."""
        deadline = time.monotonic() + timeout
        for i in range(len(self.pids)):
            self.reap(i, max(0.0, deadline - time.monotonic()))
        return {pid: self.statuses[pid] for pid in self.pids if pid in self.statuses}

    def stop(self, grace: float = 0.0) -> None:
        """Give the workers ``grace`` seconds to leave, then SIGKILL and reap the rest."""
        if grace:
            self.wait_all(grace)
        for i in range(len(self.pids)):
            self.kill(i)


def spawn_workers(
    proxy: Proxy,
    listener: socket.socket,
    n: int,
    *,
    also_close: Iterable[Proxy] = (),
) -> Workers:
    """Fork ``n`` workers and wait until each one has entered (``enter_worker``) and is ready."""
    others = list(also_close)
    ready = os.pipe()
    open_ends = list(ready)
    pool = Workers([], isinstance(proxy, MasterProxy))
    try:
        for i in range(n):
            body = functools.partial(_worker_body, proxy, listener, i, ready, others)
            pool.pids.append(fork_child(body))
        os.close(open_ends.pop())
        # Ready means: every worker wrote its byte (it has entered) *and* closed
        # both pipe ends (EOF), so that its fd table no longer changes on its own.
        got = b""
        deadline = time.monotonic() + 10.0
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not readable(ready[0], left):
                raise AssertionError(f"only {len(got)} of {n} workers became ready")
            chunk = os.read(ready[0], n + 1)
            if not chunk:
                break
            got += chunk
        if len(got) != n:
            raise AssertionError(f"a worker died before it was ready ({len(got)} of {n})")
    except BaseException:
        pool.stop()
        raise
    finally:
        for fd in open_ends:
            os.close(fd)
    return pool


# -- forked children ----------------------------------------------------------


@dataclass
class ChildOutcome:
    """What a forked child reported and how it ended."""

    status: int | None  # wait status, None if it had to be killed
    result: Any
    error: str | None
    notes: dict[str, Any]

    @property
    def exit_code(self) -> int | None:
        code = None if self.status is None else exit_code(self.status)
        return code if code is not None and code >= 0 else None

    @property
    def killed_by(self) -> int | None:
        code = None if self.status is None else exit_code(self.status)
        return -code if code is not None and code < 0 else None


def _child_body(body: Callable[[Note], Any], wfd: int, new_ipc_ns: bool) -> int:
    def emit(obj: dict[str, Any]) -> None:
        data = json.dumps(obj).encode() + b"\n"
        while data:
            data = data[os.write(wfd, data) :]

    try:
        skip: str | None = None
        if new_ipc_ns:
            try:
                namespace.enter_new_ipc_namespace()
            except OSError as exc:
                skip = str(exc)
        if skip is not None:
            emit({"skip": skip})
        else:
            emit({"ok": body(lambda key, value: emit({"note": [key, value]}))})
        return 0
    except BaseException:
        with contextlib.suppress(BaseException):
            emit({"error": traceback.format_exc()})
        return EXIT_CRASH


class Lab:
    """Resources of one test, all released at teardown (see the module docstring)."""

    def __init__(self) -> None:
        self._proxies: list[Proxy] = []
        self._pools: list[Workers] = []
        self._clients: list[socket.socket] = []
        self._queues: set[int] = set()
        self._children: dict[int, bool] = {}  # pid -> reaped
        self._pids: list[int] = []  # single forked processes (not groups)

    # proxies, listeners, queues

    def proxy(self, cls: type[P]) -> P:
        proxy = cls()
        self._proxies.append(proxy)
        return proxy

    def listen(
        self, proxy: Proxy, port: int = 0, protocol: str = "tcp"
    ) -> tuple[socket.socket, int]:
        """``create_socket``; remembers the queue it created (for cleanup)."""
        listener = proxy.create_socket(port, protocol)
        qid = queue_id(proxy)
        if qid is not None:
            self._queues.add(qid)
        return listener, int(listener.getsockname()[1])

    # processes

    def workers(
        self, proxy: Proxy, listener: socket.socket, n: int, *, also_close: Iterable[Proxy] = ()
    ) -> Workers:
        pool = spawn_workers(proxy, listener, n, also_close=also_close)
        self._pools.append(pool)
        return pool

    def fork(self, body: Callable[[], None]) -> int:
        """Fork a process that runs ``body`` and leaves with os._exit (0, or 70 on error)."""

        def run() -> int:
            body()
            return 0

        pid = fork_child(run)
        self._pids.append(pid)
        return pid

    def wait(self, pid: int, timeout: float = 10.0) -> int:
        """Wait status of a process from ``fork``; fails the test if it does not exit."""
        try:
            status = wait_status(pid, timeout, kill=False)
        except TimeoutError:
            raise AssertionError(f"process {pid} did not exit within {timeout}s") from None
        self._pids.remove(pid)
        return status

    def run_in_child(
        self, body: Callable[[Note], Any], *, new_ipc_ns: bool = False, timeout: float = 15.0
    ) -> ChildOutcome:
        """Run ``body(note)`` in a forked child (its own process group) and collect its report.

        The child's JSON-able return value is ``result``; an exception becomes
        ``error`` (its traceback). ``note("qid", id)`` reports a queue id at once,
        so that it is removed at teardown even if the child dies. With
        ``new_ipc_ns`` the child first enters a new IPC namespace (the test is
        skipped where that is not allowed); everything it creates there
        vanishes with its last process.
        """
        rfd, wfd = os.pipe()

        def child() -> int:
            os.close(rfd)
            return _child_body(body, wfd, new_ipc_ns)

        try:
            pid = fork_child(child, new_group=True)
        finally:
            os.close(wfd)
        with contextlib.suppress(OSError):  # also done by the child: no race with killpg
            os.setpgid(pid, pid)
        self._children[pid] = False
        notes: dict[str, Any] = {}
        final: dict[str, Any] = {}
        buf = b""
        deadline = time.monotonic() + timeout
        try:
            while not final:
                left = deadline - time.monotonic()
                if left <= 0 or not readable(rfd, left):
                    break
                chunk = os.read(rfd, 65536)
                if not chunk:
                    break
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    msg = json.loads(line)
                    if "note" in msg:
                        key, value = msg["note"]
                        notes[key] = value
                        if key == "qid" and not new_ipc_ns and value is not None:
                            self._queues.add(int(value))
                    else:
                        final = msg
        finally:
            os.close(rfd)
        status = self._reap_child(pid, max(0.0, deadline - time.monotonic()) + 1.0)
        if "skip" in final:
            pytest.skip(f"cannot enter a new IPC namespace: {final['skip']}")
        return ChildOutcome(status, final.get("ok"), final.get("error"), notes)

    def _reap_child(self, pid: int, timeout: float) -> int | None:
        try:
            status = wait_status(pid, timeout, kill=False)
        except TimeoutError:
            return None
        self._children[pid] = True
        return status

    # clients

    def connect(self, port: int, payload: bytes = b"ping") -> socket.socket:
        conn = socket.create_connection((HOST, port), timeout=5.0)
        self._clients.append(conn)
        if payload:
            conn.sendall(payload)
        return conn

    def ask(self, port: int, payload: bytes = b"ping") -> int:
        """A request served by whoever accepts on ``port``: the pid that answered.

        Also asserts that the client then sees EOF (nobody else holds the connection).
        """
        with self.connect(port, payload) as conn:
            pid = int(read_line(conn))
            seen = expect_eof(conn)
            assert seen == "eof", f"after pid {pid} answered, the client saw {seen}, not EOF"
            return pid

    def ask_via(
        self, proxy: MasterProxy, listener: socket.socket, port: int, payload: bytes = b"ping"
    ) -> tuple[int, int]:
        """A request dispatched by ``proxy`` in this process: (worker index, pid that answered)."""
        with self.connect(port, payload) as conn:
            index = proxy.dispatch(listener, timeout=5.0)
            pid = int(read_line(conn))
            seen = expect_eof(conn)
            assert seen == "eof", f"after pid {pid} answered, the client saw {seen}, not EOF"
            return index, pid

    # teardown

    def finalize(self) -> None:
        for conn in self._clients:
            conn.close()
        for proxy in self._proxies:
            with contextlib.suppress(Exception):
                proxy.close()
        for pool in self._pools:
            pool.stop(grace=1.0 if pool.fd_passing else 0.0)
        for pgid in self._children:
            # The whole group: the child and any worker it forked and left behind
            # (reparented, so no longer its descendant). A group id cannot be
            # reused while the group has members.
            signal_quietly(-pgid, signal.SIGKILL)
        unreaped = [pid for pid, reaped in self._children.items() if not reaped]
        kill_tree([*self._pids, *unreaped], deadline=5.0)
        if self._queues:
            for obj in list_ipc_objects():
                if obj.kind == "queue" and obj.id in self._queues:
                    remove_ipc_object(obj)
