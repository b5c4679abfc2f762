"""Length-prefixed pickle messages between the controller and the forked master.

Both ends run the same code (the master is a fork of the pytest process), so
pickle can carry exceptions, including an implementation's own OSError
subclasses, with their errno intact. Every receive has a deadline.
"""

from __future__ import annotations

import pickle
import select
import socket
import struct
import time
from typing import Any

_HEADER = struct.Struct("!I")


class WireTimeout(TimeoutError):
    """The peer did not answer in time."""


class WireClosed(EOFError):
    """The peer closed the control channel (it exited or crashed)."""


def send_msg(sock: socket.socket, obj: Any) -> None:
    try:
        data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:  # an unpicklable result: send its description instead
        data = pickle.dumps(RuntimeError(f"unpicklable value: {exc!r}"))
    sock.sendall(_HEADER.pack(len(data)) + data)


def _recv_exact(sock: socket.socket, n: int, deadline: float | None) -> bytes:
    chunks: list[bytes] = []
    while n:
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([sock], [], [], remaining)[0]:
                raise WireTimeout("no answer before the deadline")
        chunk = sock.recv(n)
        if not chunk:
            raise WireClosed("the peer closed the control channel")
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def recv_msg(sock: socket.socket, timeout: float | None) -> Any:
    deadline = None if timeout is None else time.monotonic() + timeout
    (size,) = _HEADER.unpack(_recv_exact(sock, _HEADER.size, deadline))
    return pickle.loads(_recv_exact(sock, size, deadline))
