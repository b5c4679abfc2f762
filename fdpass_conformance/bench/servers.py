"""A lean server under test for the bench: a forked master, forked workers, nothing else.

Why not the harness's ``ProxyServer``: it is built to observe, not to go
fast. Its workers read fd flags and addresses, JSON-encode a description
and report an event per connection, and its master selects on the control
channel and the listener before every ``dispatch``; measured side by side
(docs/performance.md) that overhead is as large as the whole dispatch path,
so it would hide the differences the bench exists to show. Here a worker
does what a real pre-fork worker does: accept, read the request, answer,
close. The only addition is a timestamp taken right after ``accept``
returns (``time.monotonic()``, CLOCK_MONOTONIC, which is system-wide), so the
client can compute the dispatch latency of each connection.

The master (a process group of its own, dying with the bench) moves into a
new IPC namespace where the machine allows it, so no System V object can
outlive a run, whatever the implementation does.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import select
import signal
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..contract import is_fd_passing
from ..harness import namespace
from ..processes import describe_exit, fork_child, kill_and_reap

#: A worker's answer: its pid and the CLOCK_MONOTONIC time at which ``accept`` returned,
#: followed by the request it echoes.
ANSWER = struct.Struct("=qd")
#: How long the master's ``dispatch`` waits before it looks at the stop flag.
DEFAULT_DISPATCH_TIMEOUT = 0.5
#: Consecutive worker ``accept`` errors after which a worker gives up (no busy loop).
MAX_ACCEPT_ERRORS = 100
START_TIMEOUT = 15.0


class ServerError(RuntimeError):
    """The implementation could not be brought up (or crashed); one printable line."""


@dataclass
class ServerHandle:
    """One running implementation: where to connect and which processes to measure."""

    label: str
    master_pid: int
    worker_pids: list[int]
    port: int
    fd_passing: bool
    isolation: str
    stopped: bool = False
    notes: list[str] = field(default_factory=list)

    def stop(self, grace: float = 3.0) -> list[str]:
        """Stop the master (it closes the proxy; workers leave), reap all; what had to be forced."""
        if self.stopped:
            return []
        self.stopped = True
        forced: list[str] = []
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.master_pid, signal.SIGTERM)
        if not _wait_exit(self.master_pid, grace):
            forced.append(f"{self.label}: master {self.master_pid} ignored SIGTERM, killed")
        # The master is a zombie or still alive, so its group id cannot be reused: safe.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.master_pid, signal.SIGKILL)
        code = kill_and_reap(self.master_pid)
        if code is not None and code > 0:
            forced.append(f"{self.label}: master ended with {describe_exit(code)}")
        return forced


def _wait_exit(pid: int, timeout: float) -> bool:
    """Wait until ``pid`` (our child) has exited, without reaping it; False at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return True
        if info is not None:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.005)


def start_server(
    factory: Callable[[], object],
    label: str,
    workers: int,
    *,
    dispatch_timeout: float = DEFAULT_DISPATCH_TIMEOUT,
    isolate: bool | None = None,
) -> ServerHandle:
    """Fork the master of ``factory``'s proxy with ``workers`` workers; return once all serve."""
    use_ns = namespace.IPC_NAMESPACES if isolate is None else isolate
    r, w = os.pipe()
    body = functools.partial(_master_main, factory, workers, w, r, dispatch_timeout, use_ns)
    pid = fork_child(body, new_group=True)
    os.close(w)
    try:
        report = _read_report(r, pid, label)
    finally:
        os.close(r)
    if "error" in report:
        ServerHandle(label, pid, [], 0, False, "").stop(grace=1.0)
        raise ServerError(f"{label}: {report['error']}")
    return ServerHandle(
        label,
        pid,
        [int(p) for p in report["workers"]],
        int(report["port"]),
        bool(report["fd_passing"]),
        "ipc-namespace" if use_ns else "none",
    )


def _read_report(fd: int, pid: int, label: str) -> dict[str, Any]:
    deadline = time.monotonic() + START_TIMEOUT
    buf = b""
    while not buf.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            ServerHandle(label, pid, [], 0, False, "").stop(grace=0.5)
            raise ServerError(f"{label}: the server did not start within {START_TIMEOUT:.0f}s")
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        buf += chunk
    if not buf:
        ServerHandle(label, pid, [], 0, False, "").stop(grace=0.5)
        raise ServerError(f"{label}: the server's master exited before it was serving")
    report: dict[str, Any] = json.loads(buf)
    return report


# -- inside the forked master ----------------------------------------------------


def _master_main(
    factory: Callable[[], object],
    workers: int,
    report_fd: int,
    unused_fd: int,
    dispatch_timeout: float,
    use_ns: bool,
) -> int:
    os.close(unused_fd)
    stop: list[bool] = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
    proxy: Any = None
    pids: list[int] = []
    try:
        if use_ns:
            namespace.enter_new_ipc_namespace()
        proxy = factory()
        listener = proxy.create_socket(0)
        fd_passing = is_fd_passing(proxy)
        if fd_passing:
            proxy.open_channels(workers)
        pids = _fork_workers(proxy, listener, workers, fd_passing, report_fd)
        port = int(listener.getsockname()[1])
    except Exception as exc:
        _report(report_fd, {"error": f"{type(exc).__name__}: {_first_line(exc)}"})
        _shut(proxy, pids, fd_passing=False)
        return 1
    _report(report_fd, {"port": port, "workers": pids, "fd_passing": fd_passing})
    os.close(report_fd)
    if fd_passing:
        _dispatch_loop(proxy, listener, dispatch_timeout, stop)
    else:
        while not stop:
            time.sleep(0.05)  # the kernel dispatches; the master only waits to be stopped
    _shut(proxy, pids, fd_passing)
    return 0


def _dispatch_loop(proxy: Any, listener: socket.socket, timeout: float, stop: list[bool]) -> None:
    """What a real master does: dispatch until told to stop; errors only slow it down."""
    failures = 0
    while not stop:
        try:
            proxy.dispatch(listener, timeout)
            failures = 0
        except TimeoutError:
            pass
        except OSError:
            failures += 1
            if failures > 1000:  # no worker left, or a broken listener: stop spinning
                return


def _shut(proxy: Any, pids: list[int], fd_passing: bool) -> None:
    """Close the proxy (fd-passing workers see EOF), then make sure every worker is gone."""
    if proxy is not None:
        with contextlib.suppress(Exception):
            proxy.close()
    if fd_passing:
        deadline = time.monotonic() + 2.0
        while pids and time.monotonic() < deadline:
            pids = [p for p in pids if not _reaped(p)]
            time.sleep(0.005)
    for pid in pids:
        kill_and_reap(pid)


def _reaped(pid: int) -> bool:
    """Ended and reaped now, or already reaped elsewhere (a proxy that ignores SIGCHLD)."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return bool(done)


def _fork_workers(
    proxy: Any, listener: socket.socket, n: int, fd_passing: bool, report_fd: int
) -> list[int]:
    ready_r, ready_w = os.pipe()
    pids: list[int] = []
    try:
        for index in range(n):
            body = functools.partial(
                _worker_main, proxy, index, listener, fd_passing, (ready_r, ready_w, report_fd)
            )
            pids.append(fork_child(body))
        os.close(ready_w)
        ready_w = -1
        got = 0
        deadline = time.monotonic() + START_TIMEOUT
        while got < n:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([ready_r], [], [], left)[0]:
                raise TimeoutError(f"only {got} of {n} workers became ready")
            chunk = os.read(ready_r, n)
            if not chunk:
                raise ChildProcessError(f"a worker exited before it was ready ({got} of {n})")
            got += len(chunk)
    except BaseException:
        for pid in pids:
            kill_and_reap(pid)
        raise
    finally:
        os.close(ready_r)
        if ready_w >= 0:
            os.close(ready_w)
    return pids


def _worker_main(
    proxy: Any,
    index: int,
    listener: socket.socket,
    fd_passing: bool,
    fds: tuple[int, int, int],
) -> int:
    ready_r, ready_w, report_fd = fds
    os.close(ready_r)
    os.close(report_fd)
    if fd_passing:
        proxy.enter_worker(index)
    os.write(ready_w, b".")
    os.close(ready_w)
    pid = os.getpid()
    pack = ANSWER.pack
    monotonic = time.monotonic
    errors = 0
    while True:
        try:
            conn = proxy.accept(listener)
        except EOFError:
            return 0
        except OSError:
            errors += 1
            if errors >= MAX_ACCEPT_ERRORS:
                return 3
            continue
        stamp = monotonic()
        errors = 0
        with contextlib.suppress(OSError):  # the client left early: nothing to answer
            conn.sendall(pack(pid, stamp) + conn.recv(64))
        conn.close()


def _report(fd: int, obj: dict[str, Any]) -> None:
    data = json.dumps(obj).encode() + b"\n"
    while data:
        data = data[os.write(fd, data) :]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else "(no message)"
