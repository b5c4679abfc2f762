"""Starting the program, the handshake, and one call over a control connection.

``Launch.start`` runs the command with ``FDPASS_ADAPTER_SOCKET`` pointing at
a fresh Unix socket, waits for the master's hello, and from then on
``Launch.call`` and ``WorkerLink.call`` carry one request and one reply each.
Whatever goes wrong on the way (the program is missing, dies, hangs past the
deadline, speaks garbage) becomes one ``ProgramError`` line that names the
program, the process, the request and, when known, how the process ended.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import IO, Any

from ..processes import describe_status, exec_dies_with_parent
from .procfs import fd_target, process_end, socket_target
from .wire import (
    ENV_PROTOCOL,
    ENV_SOCKET,
    POLL_SLICE,
    PROTOCOL,
    PROTOCOLS,
    Channel,
    PeerGone,
    ProgramError,
    ProtocolViolation,
    encode,
    exception_from,
    parse_line,
    parse_reply,
)

#: Seconds a request may take (dispatch: its timeout plus this), unless overridden.
DEFAULT_DEADLINE = 5.0
#: Environment variable that overrides DEFAULT_DEADLINE (seconds).
ENV_DEADLINE = "FDPASS_ADAPTER_DEADLINE"
#: Capabilities of protocol 1; a program declares exactly one.
CAPABILITIES = ("fd-passing", "shared-listener")


def default_deadline() -> float:
    raw = os.environ.get(ENV_DEADLINE, "")
    try:
        value = float(raw) if raw else DEFAULT_DEADLINE
    except ValueError:
        value = DEFAULT_DEADLINE
    return value if value > 0 else DEFAULT_DEADLINE


@dataclass(frozen=True)
class Hello:
    """What a process of the program said about itself when it connected."""

    protocol: int
    role: str  # "master" | "worker"
    pid: int
    language: str = ""
    name: str = ""
    capabilities: tuple[str, ...] = ()
    index: int | None = None

    @property
    def fd_passing(self) -> bool:
        return "fd-passing" in self.capabilities

    @classmethod
    def parse(cls, line: bytes) -> Hello:
        msg = parse_line(line)
        body = msg.get("hello")
        if not isinstance(body, dict):
            raise ProtocolViolation(f'the first line is not {{"hello": {{...}}}}: {line[:120]!r}')
        protocol: Any = body.get("protocol")
        role: Any = body.get("role")
        pid: Any = body.get("pid")
        if not _is_int(protocol):
            raise ProtocolViolation(f"hello without an integer protocol version: {body!r}")
        if role not in ("master", "worker"):
            raise ProtocolViolation(f'hello role must be "master" or "worker", got {role!r}')
        if not _is_int(pid):
            raise ProtocolViolation(f"hello without an integer pid: {body!r}")
        index: Any = body.get("index")
        if role == "worker" and not _is_int(index):
            raise ProtocolViolation(f"worker hello without an integer index: {body!r}")
        caps = body.get("capabilities", [])
        if not isinstance(caps, list) or not all(isinstance(c, str) for c in caps):
            raise ProtocolViolation(f"hello capabilities must be a list of strings: {caps!r}")
        language, name = body.get("language", ""), body.get("name", "")
        if not isinstance(language, str) or not isinstance(name, str):
            raise ProtocolViolation(f"hello language and name must be strings: {body!r}")
        return cls(
            int(protocol),
            str(role),
            int(pid),
            language,
            name,
            tuple(caps),
            None if index is None else int(index),
        )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _recv_hello(chan: Channel, deadline: float) -> Hello:
    line, fds = chan.receive(deadline)
    for fd in fds:
        os.close(fd)
    if fds:
        raise ProtocolViolation("fds came with the hello")
    return Hello.parse(line)


def _reply_ok(result: Any) -> bytes:
    return json.dumps({"ok": True, "result": result}).encode() + b"\n"


@dataclass
class Call:
    """The context of one call, for error messages: who answers, what was asked."""

    who: str
    op: str
    seconds: float | None


def _call(
    chan: Channel,
    ctx: Call,
    args: dict[str, Any],
    want_fd: bool,
    on_trouble: Callable[[str, str], ProgramError],
    peer_pid: int,
) -> Any:
    """One request on ``chan``; the result, or (result, our fd) when ``want_fd``.

    Error replies are raised as the exception they name; anything else that
    goes wrong goes to ``on_trouble`` (which kills the peer if needed and
    returns the ProgramError to raise).
    """
    data = encode(ctx.op, args)
    deadline = None if ctx.seconds is None else time.monotonic() + ctx.seconds
    try:
        chan.send(data)
        line, fds = chan.receive(deadline)
    except TimeoutError:
        raise on_trouble("hang", f"did not answer {ctx.op!r} within {ctx.seconds:g}s") from None
    except PeerGone:
        raise on_trouble("gone", f"ended during {ctx.op!r}") from None
    except ProtocolViolation as exc:
        raise on_trouble(
            "garbage", f"broke the protocol in its reply to {ctx.op!r}: {exc}"
        ) from None
    try:
        reply = parse_reply(line)
        if not reply["ok"]:
            if fds:
                raise ProtocolViolation("fds came with an error reply")
            error = exception_from(reply, ctx.who, ctx.op)
        else:
            result = reply.get("result")
            if not want_fd:
                if fds:
                    raise ProtocolViolation(f"fds came with the reply to {ctx.op!r}")
                return result
            return result, _checked_fd(result, fds, peer_pid)
    except ProtocolViolation as exc:
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        raise on_trouble(
            "garbage", f"broke the protocol in its reply to {ctx.op!r}: {exc}"
        ) from None
    raise error


def _checked_fd(result: Any, fds: list[int], pid: int) -> int:
    """The one fd of a reply whose result is {"fd": N}, N being the program's own copy of it."""
    if not isinstance(result, dict) or not _is_int(result.get("fd")):
        raise ProtocolViolation(f'the result must be {{"fd": N}}, got {result!r}')
    if len(fds) != 1:
        raise ProtocolViolation(f"{len(fds)} fds came with the reply, expected exactly 1")
    remote = int(result["fd"])
    held = fd_target(pid, remote)
    ours = socket_target(fds[0])
    if held != ours:
        raise ProtocolViolation(
            f"the reply names fd {remote}, but /proc/{pid}/fd/{remote} is "
            f"{held or 'not open'}, not the socket that came with it ({ours})"
        )
    return fds[0]


@dataclass
class WorkerLink:
    """The control connection of one program worker."""

    index: int
    pid: int
    chan: Channel
    label: str
    broken: str | None = None

    @property
    def who(self) -> str:
        return f"{self.label} worker {self.index} (pid {self.pid})"

    def call(
        self, op: str, args: dict[str, Any], want_fd: bool = False, seconds: float | None = None
    ) -> Any:
        if self.broken is not None:
            raise ProgramError(f"{self.who} failed earlier: {self.broken}")
        return _call(self.chan, Call(self.who, op, seconds), args, want_fd, self._trouble, self.pid)

    def _trouble(self, kind: str, what: str) -> ProgramError:
        self.broken = what
        if kind == "gone":
            what += f" ({process_end(self.pid) or 'it closed its connection'})"
        elif process_end(self.pid) is None:
            with contextlib.suppress(OSError):
                os.kill(self.pid, signal.SIGKILL)  # hung or garbled: nothing sane is left
            what += "; killed it"
        return ProgramError(f"{self.who} {what}")


@dataclass
class Launch:
    """A running program master, its control connection and the socket workers connect to."""

    argv: tuple[str, ...]
    label: str
    proc: subprocess.Popen[bytes]
    server: socket.socket
    workdir: str
    log: IO[bytes]
    chan: Channel | None = None
    hello: Hello | None = None
    status: int | None = None
    worker_pids: list[int] = field(default_factory=list)
    #: Wait statuses taken by someone else in this process (the harness's master reaps
    #: any child with ``waitpid(-1)``; the exec backend records them here): pid -> status.
    reaped: Mapping[int, int] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def who(self) -> str:
        return f"{self.label} master (pid {self.pid})"

    @classmethod
    def start(
        cls,
        argv: Sequence[str],
        label: str,
        seconds: float,
        reaped: Mapping[int, int] | None = None,
    ) -> Launch:
        """Run the program and complete the master's handshake; ProgramError on any failure.

        ``reaped``: where statuses of the program's master reaped by another are recorded.
        """
        workdir = tempfile.mkdtemp(prefix="fdpass-adapter-")
        path = os.path.join(workdir, "ctl")
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        log: IO[bytes] | None = None
        try:
            server.bind(path)
            server.listen(16)
            # Anonymous (O_TMPFILE): what the program's fds 1 and 2 refer to never changes,
            # and nothing is left on disk whatever happens to us.
            log = tempfile.TemporaryFile()  # noqa: SIM115 (kept open for the stderr tail)
            env = dict(os.environ)
            env[ENV_SOCKET] = path
            env[ENV_PROTOCOL] = str(PROTOCOL)
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=env,
                close_fds=True,
                preexec_fn=exec_dies_with_parent(),  # single-threaded callers; prctl only
            )
        except OSError as exc:
            server.close()
            if log is not None:
                log.close()
            shutil.rmtree(workdir, ignore_errors=True)
            raise ProgramError(
                f"{label}: cannot start {argv[0]!r}: {exc.strerror or exc}"
            ) from None
        launch = cls(tuple(argv), label, proc, server, workdir, log)
        if reaped is not None:
            launch.reaped = reaped
        try:
            launch._handshake(seconds)
        except BaseException:
            launch.terminate()
            raise
        return launch

    # -- the master ------------------------------------------------------

    def _handshake(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        conn = self._accept(deadline, "connect to $" + ENV_SOCKET)
        self.chan = Channel(conn, self.end)
        try:
            hello = _recv_hello(self.chan, deadline)
        except TimeoutError:
            raise self.trouble("hang", f"sent no hello within {seconds:g}s") from None
        except PeerGone:
            raise self.trouble("gone", "ended before its hello") from None
        except ProtocolViolation as exc:
            raise self.trouble("garbage", f"broke the protocol in its hello: {exc}") from None
        if hello.role != "master" or hello.pid != self.pid:
            raise self.trouble(
                "garbage",
                f"said hello as {hello.role} pid {hello.pid}; the started process is pid "
                f"{self.pid} and must say hello as master (exec the program, don't fork it)",
            )
        if hello.protocol not in PROTOCOLS:
            known = ", ".join(map(str, PROTOCOLS))
            self._send_quietly(
                json.dumps(
                    {"ok": False, "error": "ValueError",
                     "message": f"unknown adapter protocol {hello.protocol}; known: {known}"}
                ).encode() + b"\n"
            )  # fmt: skip
            raise self.trouble(
                "garbage",
                f"speaks adapter protocol {hello.protocol}, which this toolkit does not know "
                f"(it speaks {known}): use a kit for protocol {PROTOCOL} or a newer toolkit",
            )
        caps = [c for c in hello.capabilities if c in CAPABILITIES]
        if len(caps) != 1:
            raise self.trouble(
                "garbage",
                f"declares capabilities {list(hello.capabilities)}; exactly one of "
                f"{', '.join(CAPABILITIES)} is required",
            )
        self.hello = hello
        self._send_quietly(_reply_ok({"protocol": hello.protocol}))

    def _send_quietly(self, data: bytes) -> None:
        assert self.chan is not None
        with contextlib.suppress(PeerGone):
            self.chan.send(data)

    def _accept(self, deadline: float, what: str) -> socket.socket:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self.trouble("hang", f"did not {what} within the deadline")
            if select.select([self.server], [], [], min(POLL_SLICE, remaining))[0]:
                conn, _ = self.server.accept()
                return conn
            end = self.end()
            if end is not None:
                raise self.trouble("gone", f"ended before it could {what}")

    def call(
        self, op: str, args: dict[str, Any], want_fd: bool = False, seconds: float | None = None
    ) -> Any:
        assert self.chan is not None
        return _call(self.chan, Call(self.who, op, seconds), args, want_fd, self.trouble, self.pid)

    def accept_worker(self, index: int, pid: int, seconds: float) -> WorkerLink:
        """The control connection of the worker just forked; ProgramError if it doesn't come."""
        deadline = time.monotonic() + seconds
        who = f"{self.label} worker {index} (pid {pid})"
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ProgramError(f"{who} did not connect to ${ENV_SOCKET} within {seconds:g}s")
            if not select.select([self.server], [], [], min(POLL_SLICE, remaining))[0]:
                if process_end(pid) is not None:
                    raise ProgramError(f"{who} ended before it connected to ${ENV_SOCKET}")
                continue
            conn, _ = self.server.accept()
            chan = Channel(conn, lambda: process_end(pid))
            try:
                hello = _recv_hello(chan, deadline)
            except (TimeoutError, PeerGone, ProtocolViolation) as exc:
                chan.close()
                raise ProgramError(f"{who}: no valid hello ({exc})") from None
            if (
                hello.role != "worker"
                or hello.index != index
                or hello.pid != pid
                or (self.hello is not None and hello.protocol != self.hello.protocol)
            ):
                chan.close()
                raise ProgramError(
                    f"{who}: the connection said hello as {hello.role} {hello.index} "
                    f"pid {hello.pid} protocol {hello.protocol}"
                )
            try:
                chan.send(_reply_ok({"protocol": hello.protocol}))
            except PeerGone as exc:
                chan.close()
                raise ProgramError(f"{who} ended right after its hello ({exc})") from None
            self.worker_pids.append(pid)
            return WorkerLink(index, pid, chan, self.label)

    # -- its end ---------------------------------------------------------

    def end(self) -> str | None:
        """None while the master runs; else how it ended (status, last stderr line)."""
        if self.status is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                reaped = self.reaped.get(self.pid)
                if reaped is None:
                    return "it exited; status unknown"
                pid, status = self.pid, reaped
            if pid == 0:
                return None
            self.status = status
            self.proc.returncode = os.waitstatus_to_exitcode(status)
        text = describe_status(self.status)
        tail = self.stderr_tail()
        return f"{text}; stderr: {tail}" if tail else text

    def trouble(self, kind: str, what: str) -> ProgramError:
        """The one-line error for ``what`` ("gone", "hang" or "garbage").

        A master that hangs or garbles is killed: nothing sane can follow. One
        that closed its connection gets a moment to exit, so that its exit
        status, not our SIGKILL, is what the line reports.
        """
        if kind == "gone":
            end = time.monotonic() + 1.0
            while self.end() is None and time.monotonic() < end:
                time.sleep(0.005)
        if self.end() is None:
            self.kill()
            what += "; killed it"
        ended = self.end() or "still running"
        if ended not in what:
            what += f" ({ended})"
        return ProgramError(f"{self.who} {what}")

    def stderr_tail(self, limit: int = 200) -> str:
        try:
            self.log.seek(0, os.SEEK_END)
            size = self.log.tell()
            self.log.seek(max(0, size - 4096))
            lines = [ln.strip() for ln in self.log.read().splitlines() if ln.strip()]
        except (OSError, ValueError):
            return ""
        if not lines:
            return ""
        text = lines[-1].decode(errors="replace")
        return text if len(text) <= limit else text[:limit] + "..."

    def kill(self, wait: float = 3.0) -> None:
        with contextlib.suppress(OSError):
            os.kill(self.pid, signal.SIGKILL)
        end = time.monotonic() + wait
        while self.end() is None and time.monotonic() < end:
            time.sleep(0.005)

    def release_path(self) -> None:
        """Close the socket workers connect to and remove its directory."""
        self.server.close()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def close_local(self) -> None:
        """In a forked process: drop our copies of the master's connections, touch nothing else."""
        if self.chan is not None:
            self.chan.close()
        self.server.close()
        self.log.close()

    def terminate(self, grace: float = 1.0) -> None:
        """Stop the program: EOF on its connection, then SIGKILL; its workers too. Idempotent."""
        if self.chan is not None:
            self.chan.close()
        end = time.monotonic() + grace
        while self.end() is None and time.monotonic() < end:
            time.sleep(0.005)
        if self.end() is None:
            self.kill()
        for pid in self.worker_pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        self.release_path()
        self.log.close()


def probe(argv: Sequence[str], label: str, seconds: float) -> Hello:
    """Start the program once for its hello, then stop it; ProgramError on any failure."""
    launch = Launch.start(argv, label, seconds)
    try:
        assert launch.hello is not None
        return launch.hello
    finally:
        launch.terminate()


def probe_isolated(argv: Sequence[str], label: str, seconds: float) -> Hello:
    """:func:`probe` inside the isolation the servers use (a private IPC namespace, or
    the global lock with a diff and cleanup): a program that makes IPC objects as it
    starts leaves none on the host, even from this configure-time trial start."""
    from ..harness.isolation import call_isolated

    def run() -> bytes:
        try:
            return b"ok" + json.dumps(asdict(probe(argv, label, seconds))).encode()
        except ProgramError as exc:
            return b"no" + str(exc).encode()

    try:
        result = call_isolated(run, timeout=seconds + 10.0)
    except TimeoutError:
        raise ProgramError(
            f"{label}: its trial start did not end within {seconds + 10:g}s"
        ) from None
    kind, body = result.output[:2], result.output[2:].decode(errors="replace")
    if result.status != 0 or kind not in (b"ok", b"no"):
        shown = result.output.decode(errors="replace").strip()[:300] or f"status {result.status}"
        raise ProgramError(f"{label}: its trial start failed: {shown}")
    if kind == b"no":
        raise ProgramError(body)
    data = json.loads(body)
    data["capabilities"] = tuple(data["capabilities"])
    return Hello(**data)


def still_holds(pid: int, remote_fd: int, ours: int) -> bool:
    """Whether fd ``remote_fd`` of ``pid`` is still the socket our fd ``ours`` is."""
    try:
        return fd_target(pid, remote_fd) == socket_target(ours)
    except OSError:
        return False
