"""The adapter protocol on the wire: JSON lines, one request and one reply, fds as SCM_RIGHTS.

Everything here is about one control connection to one process of the
program: encoding a request, reading exactly one reply line (and the fds that
came with it) before a deadline, and turning an error reply back into the
Python exception it names. Nothing here knows about proxies or processes
beyond "is the peer still alive", which the caller answers.
"""

from __future__ import annotations

import _socket
import array
import errno
import json
import os
import select
import socket
import time
from collections.abc import Callable
from typing import Any

from ..harness.errors import HarnessError
from ..outcomes import MissingMethod

#: The newest protocol version this adapter speaks (docs/adapter.md), announced to the
#: program in $FDPASS_ADAPTER_PROTOCOL.
PROTOCOL = 2
#: Every version a program may say hello with. Version 2 adds the error kinds
#: ``internal`` and ``unsupported``, which a version 1 program never sends.
PROTOCOLS = (1, 2)
#: Environment variables the program is started with.
ENV_SOCKET = "FDPASS_ADAPTER_SOCKET"
ENV_PROTOCOL = "FDPASS_ADAPTER_PROTOCOL"
#: A reply line longer than this is garbage, not a reply.
MAX_LINE = 65536
#: At most this many fds are accepted with one reply (the protocol sends 0 or 1).
MAX_FDS = 4
#: How often a wait wakes up to ask whether the peer is still alive.
POLL_SLICE = 0.1

_FD_SIZE = array.array("i").itemsize
_ANC_SPACE = socket.CMSG_SPACE(MAX_FDS * _FD_SIZE)
_CMSG_CLOEXEC: int = getattr(socket, "MSG_CMSG_CLOEXEC", 0)
_NOSIGNAL: int = getattr(socket, "MSG_NOSIGNAL", 0)


def _plain(cls: type[BaseException]) -> Callable[[int | None, str], BaseException]:
    return lambda code, message: cls(message)


def _os_error(code: int | None, message: str) -> BaseException:
    # OSError(errno, text) picks the subclass (BrokenPipeError, ...) from the errno.
    return OSError(code, message) if code is not None else OSError(message)


def _timeout_error(code: int | None, message: str) -> BaseException:
    return TimeoutError(code if code is not None else errno.ETIMEDOUT, message)


#: Error kinds a reply may name that are Python exceptions, and how each is re-raised here.
ERROR_KINDS: dict[str, Callable[[int | None, str], BaseException]] = {
    "OSError": _os_error,
    "TimeoutError": _timeout_error,
    "EOFError": _plain(EOFError),
    "ValueError": _plain(ValueError),
    "TypeError": _plain(TypeError),
    "OverflowError": _plain(OverflowError),
    "IndexError": _plain(IndexError),
    "RuntimeError": _plain(RuntimeError),
}


#: Error kinds that are no Python exception: a bug inside the program, a missing method.
INTERNAL = "internal"
UNSUPPORTED = "unsupported"


class ProgramError(HarnessError):
    """The program broke the protocol: it died, hung or spoke garbage. One line."""


class ProgramDefect(ProgramError):
    """The program reported a bug inside itself (error kind ``internal``: a PHP ``\\Error``,
    a failed assertion): the implementation's defect, with the program's own message.
    The program is still running and answering, so nothing is killed."""


class UnsupportedMethod(MissingMethod):
    """The program has no such method (error kind ``unsupported``): the requirements that
    need it are reported blocked by the one that asks for the method (SP-01 or FP-01),
    not as failures of the methods the program does have."""


class ProtocolViolation(Exception):
    """A reply that is not a reply; the caller turns it into a ProgramError with context."""


class PeerGone(Exception):
    """The peer closed the connection or its process ended while we waited."""


def encode(op: str, args: dict[str, Any]) -> bytes:
    """One request line. Arguments JSON cannot carry are a TypeError, as Python would raise."""
    msg: dict[str, Any] = {"op": op}
    for name, value in args.items():
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError):
            raise TypeError(
                f"{op}: {name}={value!r} ({type(value).__name__}) cannot be passed to an exec: "
                "implementation (not representable in JSON)"
            ) from None
        msg[name] = value
    return json.dumps(msg, allow_nan=False).encode() + b"\n"


def exception_from(reply: dict[str, Any], who: str = "the program", op: str = "") -> BaseException:
    """The exception an error reply names; ProtocolViolation if it names none we know.

    ``who`` and ``op`` (the process and the request) go into the two kinds that are
    about the program rather than about the call: ``internal`` and ``unsupported``.
    """
    kind = reply.get("error")
    if not isinstance(kind, str) or kind not in (*ERROR_KINDS, INTERNAL, UNSUPPORTED):
        raise ProtocolViolation(
            f"error reply names kind {kind!r}, expected one of "
            f"{', '.join((*ERROR_KINDS, INTERNAL, UNSUPPORTED))}"
        )
    message = reply.get("message", "")
    if not isinstance(message, str):
        raise ProtocolViolation(f"error reply has a non-string message {message!r}")
    code = reply.get("errno")
    if code is not None and (isinstance(code, bool) or not isinstance(code, int)):
        raise ProtocolViolation(f"error reply has a non-integer errno {code!r}")
    if kind == INTERNAL:
        return ProgramDefect(
            f"{who} reported an internal error (a bug in the program) during {op!r}: "
            f"{' '.join(message.split()) or '(no message)'}"
        )
    if kind == UNSUPPORTED:
        return UnsupportedMethod(
            op, f"{who} does not implement {op!r}" + (f": {message}" if message else "")
        )
    return ERROR_KINDS[kind](code, message)


def parse_line(line: bytes) -> dict[str, Any]:
    try:
        value = json.loads(line)
    except ValueError as exc:
        why = getattr(exc, "msg", None) or str(exc)
        raise ProtocolViolation(f"not JSON ({why}): {_show(line)}") from None
    if not isinstance(value, dict):
        raise ProtocolViolation(f"not a JSON object: {_show(line)}")
    return value


def parse_reply(line: bytes) -> dict[str, Any]:
    reply = parse_line(line)
    if not isinstance(reply.get("ok"), bool):
        raise ProtocolViolation(f'no boolean "ok" member: {_show(line)}')
    return reply


def _show(data: bytes, limit: int = 120) -> str:
    text = repr(data[:limit])
    return text + ("..." if len(data) > limit else "")


class Channel:
    """One control connection: send a line, read one line back with its fds.

    ``alive`` is asked every POLL_SLICE seconds while waiting; it returns None
    while the peer lives and a description of its end once it is gone.
    """

    def __init__(self, sock: socket.socket, alive: Callable[[], str | None]) -> None:
        self.sock = sock
        self.alive = alive

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        try:
            self.sock.sendall(data, _NOSIGNAL)
        except OSError as exc:
            raise PeerGone(f"sending failed: {exc.strerror or exc}") from None

    def receive(self, deadline: float | None) -> tuple[bytes, list[int]]:
        """One line (without its newline) and the fds that came with it.

        Raises TimeoutError at the deadline, PeerGone when the peer closed or
        died, ProtocolViolation for an overlong line or data after the line.
        The fds are close-on-exec here; on any exception they are closed.
        """
        buf = bytearray()
        fds: list[int] = []
        try:
            while b"\n" not in buf:
                self._wait_readable(deadline)
                data, more = self._recv()
                fds += more
                if not data:
                    gone = self.alive()
                    raise PeerGone(gone or "it closed the connection")
                buf += data
                if len(buf) > MAX_LINE:
                    raise ProtocolViolation(f"a reply line longer than {MAX_LINE} bytes")
            line, _, rest = bytes(buf).partition(b"\n")
            if rest:
                raise ProtocolViolation(
                    f"data after the reply line (one request, one reply): {_show(rest)}"
                )
            return line, fds
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise

    def _wait_readable(self, deadline: float | None) -> None:
        while True:
            wait = POLL_SLICE
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError("no reply before the deadline")
                wait = min(wait, remaining)
            if select.select([self.sock], [], [], wait)[0]:
                return
            gone = self.alive()
            if gone is not None:
                raise PeerGone(gone)

    def _recv(self) -> tuple[bytes, list[int]]:
        # The base class's recvmsg: a test that wraps socket.socket.recvmsg in a
        # worker (FLT-06) must reach the implementation's receiver, never ours.
        data, ancdata, flags, _ = _socket.socket.recvmsg(self.sock, 4096, _ANC_SPACE, _CMSG_CLOEXEC)
        fds = array.array("i")
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(payload[: len(payload) - len(payload) % _FD_SIZE])
        received = list(fds)
        if not _CMSG_CLOEXEC:
            for fd in received:
                os.set_inheritable(fd, False)
        if flags & socket.MSG_CTRUNC:
            for fd in received:
                os.close(fd)
            raise ProtocolViolation("the fds of a reply were truncated (MSG_CTRUNC)")
        return data, received
