"""One-way event reports from the server's processes to the controller.

The master's control channel is busy while it dispatches and a worker has
none, so both report what happened (a connection served, accept failing,
EOF) as JSON lines on a shared pipe. Each line is far below PIPE_BUF, hence
atomic; the write end is non-blocking so a slow reader can never stall a
worker: an error event that doesn't fit is counted as dropped, not waited for.
Every other event (ready, served, eof, exit, ...) is what the controller waits
on, so it waits for room, up to ``LIFECYCLE_WAIT`` seconds: a worker flooding
accept errors must not cost another worker its "ready".
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import select
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Event:
    role: str  # "master" | "worker"
    index: int  # worker index, -1 for the master
    pid: int
    kind: str  # "served", "accept-error", "eof", "dispatch-error", "crash", ...
    detail: dict[str, Any] = field(default_factory=dict)
    at: float = 0.0


#: Events that may be dropped when the pipe is full: repeated error reports.
LOSSY = frozenset({"serve-error", "select-error", "close-error", "accepting"})
#: Seconds any other event waits for room in a full pipe before it is dropped.
LIFECYCLE_WAIT = 5.0


class EventWriter:
    def __init__(self, fd: int, role: str, index: int) -> None:
        self.fd, self.role, self.index = fd, role, index
        self.dropped = 0

    def emit(self, kind: str, **detail: Any) -> None:
        line = json.dumps(
            {
                "role": self.role,
                "index": self.index,
                "pid": os.getpid(),
                "kind": kind,
                "detail": detail,
                "at": time.monotonic(),
            },
            default=str,
        )
        data = (line[:3800] + "\n").encode()
        try:
            self._write(data, 0.0 if kind in LOSSY else LIFECYCLE_WAIT)
        except BlockingIOError:
            self.dropped += 1
        except OSError as exc:
            if exc.errno not in (errno.EPIPE, errno.EBADF):
                raise

    def _write(self, data: bytes, wait: float) -> None:
        """One atomic write; waits up to ``wait`` s for the reader to make room."""
        deadline = time.monotonic() + wait
        while True:
            try:
                os.write(self.fd, data)
                return
            except BlockingIOError:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise
                poller = select.poll()  # not select(): a filled fd table has fds >= 1024
                poller.register(self.fd, select.POLLOUT)
                poller.poll(int(min(left, 0.1) * 1000) + 1)


class EventReader:
    """The controller's end: drains without blocking and keeps every event."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.events: list[Event] = []
        self._partial = b""

    def drain(self, timeout: float = 0.0) -> list[Event]:
        """Read what is available (waiting up to ``timeout`` for the first byte)."""
        new: list[Event] = []
        wait = timeout
        while self.fd >= 0 and select.select([self.fd], [], [], wait)[0]:
            wait = 0.0
            try:
                chunk = os.read(self.fd, 65536)
            except BlockingIOError:
                break
            if not chunk:
                break
            *lines, self._partial = (self._partial + chunk).split(b"\n")
            for raw in lines:
                with contextlib.suppress(ValueError):
                    new.append(Event(**json.loads(raw)))
        self.events.extend(new)
        return new

    def wait_for(self, predicate: Any, timeout: float) -> Event | None:
        """The first event (old or new) matching ``predicate``, or None at the deadline."""
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            for ev in self.events[seen:]:
                if predicate(ev):
                    return ev
            seen = len(self.events)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self.drain(min(remaining, 0.05))
