"""FLT-05's client model: what each client connection saw, read without blocking.

A request is answered by a worker and then closed (EOF), or it ends without
an answer only for a reason the model knows of (``Client.excuse``). A request
sent while every live worker is busy with a held client may wait ("pending")
until a held client is closed.
"""

from __future__ import annotations

import errno
import itertools
import select
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

from ...harness.server import Reply

PLAIN, HOLDING = "plain", "hold"
PENDING, HELD, DONE, CLOSED = "pending", "held", "done", "closed"


@dataclass(eq=False)
class Client:
    """One client connection and what the model knows about it."""

    number: int
    kind: str  # PLAIN: answered, then closed by the worker; HOLDING: kept open by it
    sock: socket.socket
    payload: bytes
    local: tuple[str, int]
    kills_before: int  # kills before its request was sent
    excuse: str | None = None  # why ending unanswered would be legitimate
    state: str = PENDING
    data: bytes = b""
    end: str = ""
    reply: Reply | None = None
    garbled: str = ""
    was_held: bool = False
    checked: bool = False
    dispatched_to: int | None = None
    dispatch_error: str | None = None

    @property
    def name(self) -> str:
        return f"client {self.number} ({self.kind})"

    @property
    def answered(self) -> bool:
        return b"\n" in self.data

    @property
    def worker(self) -> int | None:
        return None if self.reply is None else self.reply.index

    @property
    def open(self) -> bool:
        return self.state in (PENDING, HELD)

    def pump(self) -> None:
        """Read whatever has arrived, without blocking; note the answer and the end."""
        while self.open:
            try:
                chunk = self.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                resets = (errno.ECONNRESET, errno.EPIPE)
                self.finish("reset" if exc.errno in resets else f"error {exc}")
                return
            if not chunk:
                self.finish("eof")
                return
            self.data += chunk
            if self.reply is None and not self.garbled and self.answered:
                self._parse("open")
                if self.kind == HOLDING:
                    self.state = HELD
                    self.was_held = True

    def _parse(self, end: str) -> None:
        try:
            self.reply = Reply.parse(self.data, end)
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            self.garbled = f"{type(exc).__name__}: {exc}; got {self.data[:200]!r}"

    def finish(self, end: str) -> None:
        """The connection ended (``end``: eof, reset...); the socket is closed."""
        if self.answered and not self.garbled:
            self._parse(end)
        self.state, self.end = DONE, end
        self.sock.close()

    def close(self) -> None:
        if self.open:
            self.state = CLOSED
        self.sock.close()


class Clients:
    """The clients of one run: every one made, and the open ones (pending or held)."""

    def __init__(self) -> None:
        self.open: list[Client] = []
        self.every: list[Client] = []
        self._numbers = itertools.count(1)

    def next_number(self) -> int:
        return next(self._numbers)

    def add(self, client: Client) -> None:
        self.every.append(client)
        self.open.append(client)

    def pending(self) -> list[Client]:
        return [c for c in self.open if c.state == PENDING]

    def held(self) -> list[Client]:
        return [c for c in self.open if c.state == HELD]

    def held_on(self, worker: int) -> int:
        return sum(1 for c in self.held() if c.worker == worker)

    def wait(self, done: Callable[[], bool], timeout: float) -> bool:
        """Pump every open client until ``done()`` or the deadline; True if done."""
        deadline = time.monotonic() + timeout
        while True:
            for c in self.open:
                c.pump()
            if done():
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            poller = select.poll()
            for c in self.open:
                if c.open:
                    poller.register(c.sock.fileno(), select.POLLIN)
            poller.poll(max(1, int(min(remaining, 0.05) * 1000)))

    def close_all(self) -> None:
        for client in self.every:
            client.close()


def any_ended(clients: list[Client]) -> Callable[[], bool]:
    return lambda: any(c.state != PENDING for c in clients)


def answer_index(sock: socket.socket, timeout: float) -> int | None:
    """The worker index in a hold answer read within ``timeout``; None without one."""
    deadline = time.monotonic() + timeout
    data = b""
    try:
        while b"\n" not in data:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            sock.settimeout(remaining)
            chunk = sock.recv(4096)
            if not chunk:
                return None
            data += chunk
        return Reply.parse(data, "open").index
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None


def first_answered(socks: list[socket.socket], timeout: float) -> tuple[socket.socket, int] | None:
    """The first of ``socks`` a worker answers within ``timeout``, with its index.

    Not the oldest: workers may take queued clients in any order (a worker
    with two listeners, one backlog each, may take the younger client first
    and hold it), so waiting on one particular client can wait on a worker
    that is rightly busy.
    """
    deadline = time.monotonic() + timeout
    readable, _, _ = select.select(socks, [], [], timeout)
    if not readable:
        return None
    sock = readable[0]
    index = answer_index(sock, max(deadline - time.monotonic(), 0.1))
    return None if index is None else (sock, index)  # None: closed or garbled
