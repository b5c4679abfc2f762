"""A yardstick, not a proxy to use: the least a Python fd-passing master can do per connection.

Why it exists: to tell how much of MasterProxy's cost is its own logic and
how much any master written in Python pays. ``MinimalMasterProxy.dispatch``
is accept, one ``sendmsg`` round-robin, close: no idle tokens, no dead-worker
re-routing, no error wording, no backpressure, no queue at all. Run it side
by side with the reference (``--impl fdpass_conformance.bench.minimal:MinimalMasterProxy``);
the gap between it and ForkShared is what only a faster language or fewer
wake-ups could close (see docs/performance.md). It fails most of the
contract's fault requirements on purpose.
"""

from __future__ import annotations

import math
import os
import select
import socket

_NOSIGNAL: int = getattr(socket, "MSG_NOSIGNAL", 0)


class MinimalMasterProxy:
    """Round-robin fd passing with nothing else (see the module docstring)."""

    def __init__(self) -> None:
        self._listeners: list[socket.socket] = []
        self._masters: list[socket.socket] = []
        self._workers: list[socket.socket] = []
        self._chan: socket.socket | None = None
        self._next = 0
        self._poller: select.poll | None = None

    def is_supported(self) -> bool:
        return hasattr(socket, "SOCK_SEQPACKET")

    def create_socket(self, port: int, protocol: str = "tcp") -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen(socket.SOMAXCONN)
        self._listeners.append(sock)
        return sock

    def open_channels(self, workers: int) -> None:
        for _ in range(workers):
            m, w = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            self._masters.append(m)
            self._workers.append(w)

    def enter_worker(self, index: int) -> None:
        for i, w in enumerate(self._workers):
            if i != index:
                w.close()
        for s in (*self._masters, *self._listeners):
            s.close()
        self._chan = self._workers[index]

    def dispatch(self, listener: socket.socket, timeout: float | None = None) -> int:
        if self._workers:  # seal: the master keeps no worker end
            for w in self._workers:
                w.close()
            self._workers = []
        if timeout is not None:
            if self._poller is None:
                self._poller = select.poll()
                self._poller.register(listener.fileno(), select.POLLIN)
            if not self._poller.poll(max(0, math.ceil(timeout * 1000))):
                raise TimeoutError("no connection")
        fd, _ = listener._accept()  # type: ignore[attr-defined]
        try:
            index = self._next
            self._next = (index + 1) % len(self._masters)
            socket.send_fds(self._masters[index], [b"m"], [fd], _NOSIGNAL)
        finally:
            os.close(fd)
        return index

    def accept(self, listener: socket.socket) -> socket.socket:
        assert self._chan is not None
        _, fds, _, _ = socket.recv_fds(self._chan, 1, 1)
        if not fds:
            raise EOFError("the master closed the channel")
        os.set_inheritable(fds[0], False)
        return socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, fileno=fds[0])

    def close(self) -> None:
        for s in (*self._listeners, *self._masters, *self._workers):
            s.close()
        if self._chan is not None:
            self._chan.close()
        self._listeners, self._masters, self._workers, self._chan = [], [], [], None
