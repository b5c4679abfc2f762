"""What a worker of the server under test does: accept, answer, report.

The answer tells the client which process served it and what that process
saw of the socket (peer and local address, close-on-exec, O_NONBLOCK), read
from the kernel with fcntl rather than from Python's view of the object, so
the suites judge the fd the worker really holds.
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import socket
from collections.abc import Callable
from typing import Any

from .backends import Backend
from .errors import WorkerGone
from .events import EventWriter

#: A request that keeps the connection open until the client closes it.
HOLD = b"hold"
#: A request after which the worker closes its proxy (as a worker) and exits 0.
EXIT = b"exit"
#: A request after which the worker fills its fd table, released at the next
#: accept() error: the next connection meets a full table (FP-14).
FILL = b"fill"
#: Consecutive accept() errors after which a worker gives up instead of spinning.
MAX_ACCEPT_ERRORS = 200
HANDLER_TIMEOUT = 10.0


def describe_conn(conn: socket.socket, backend: Backend) -> dict[str, Any]:
    fd = conn.fileno()
    return {
        "pid": os.getpid(),
        "peer": list(conn.getpeername()),
        "local": list(conn.getsockname()),
        "cloexec": bool(fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC),
        "nonblock": bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_NONBLOCK),
        "fd": fd,
        # An out-of-process implementation (the exec adapter) says which of its
        # processes received the connection and what the fd's flags are there.
        **backend.describe_socket(conn),
    }


def _recv_request(conn: socket.socket) -> bytes:
    ready = select.select([conn], [], [], HANDLER_TIMEOUT)[0]
    return conn.recv(4096) if ready else b""


def serve(conn: socket.socket, index: int, events: EventWriter, backend: Backend) -> bytes:
    """Answer one request with a JSON line, then close (or hold until the client does).

    Returns the request, so the loop can act on EXIT and FILL after closing.
    """
    request = b""
    try:
        info = describe_conn(conn, backend)
        info["index"] = index
        request = _recv_request(conn)
        info["data"] = request.decode(errors="replace")
        conn.sendall(json.dumps(info).encode() + b"\n")
        events.emit("served", peer=info["peer"], hold=request.startswith(HOLD))
        if request.startswith(HOLD):
            while select.select([conn], [], [], HANDLER_TIMEOUT)[0] and conn.recv(4096):
                pass
    except OSError as exc:
        events.emit("serve-error", errno=exc.errno, message=str(exc))
    finally:
        conn.close()
    return request


def run_worker(
    proxy: Any,
    index: int,
    listener: socket.socket,
    fd_passing: bool,
    events: EventWriter,
    setup: Callable[[int], object] | None,
    backend: Backend,
) -> int:
    if fd_passing:
        proxy.enter_worker(index)
    if setup is not None:
        setup(index)
    events.emit("ready")
    filler = backend.fd_filler(proxy)  # the table of the process that implements this worker
    errors = 0
    while True:
        # Says "this worker is about to wait for its next connection": FP-12 needs to
        # know that a worker is back in accept, not merely asleep somewhere else.
        events.emit("accepting")
        try:
            conn = proxy.accept(listener)
        except EOFError:
            events.emit("eof")
            proxy.close()
            return 0
        except WorkerGone as exc:
            events.emit("impl-gone", message=str(exc))
            return 0
        except OSError as exc:
            released = filler.release()
            events.emit(
                "accept-error",
                errno=exc.errno,
                message=str(exc),
                type=type(exc).__name__,
                released=released,
            )
            errors += 1
            if errors >= MAX_ACCEPT_ERRORS:
                events.emit("giving-up", errors=errors)
                return 3
            continue
        errors = 0
        request = serve(conn, index, events, backend)
        if request.startswith(EXIT):
            proxy.close()
            events.emit("exit")
            return 0
        if request.startswith(FILL):
            events.emit("filled", held=filler.fill(0))
