"""A scripted program for the exec adapter's own tests: FAKE_MODE picks how it behaves.

Modes: ok (a correct shared-listener proxy: workers inherit the listener and
accept on it, like reference.ForkSharedProxy), errors (create_socket(k) answers
with error reply k of ERRORS), garbage, hang, exit-on-3, no-fd, wrong-fd,
garbage-hello, no-hello, protocol-3, no-caps, forks (says hello from a child).
"""

from __future__ import annotations

import array
import contextlib
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from typing import Any

MODE = os.environ.get("FAKE_MODE", "ok")

#: Error replies of mode "errors", chosen by create_socket's port.
ERRORS: list[dict[str, Any]] = [
    {"error": "OSError", "errno": 32, "message": "dispatch: sendmsg failed: Broken pipe"},
    {"error": "TimeoutError", "errno": 110, "message": "dispatch: no connection within 1s"},
    {"error": "EOFError", "message": "accept: the master closed the channel"},
    {"error": "ValueError", "message": "port 70000 is outside 0..65535"},
    {"error": "TypeError", "message": "port must be an int"},
    {"error": "OverflowError", "message": "port too large"},
    {"error": "IndexError", "message": "index 3 outside 0..1"},
    {"error": "RuntimeError", "message": "call open_channels() first"},
    {"error": "OSError", "message": "no errno given"},
    {"error": "KeyError", "message": "not a kind of protocol 1"},
    {"error": "OSError", "errno": "32", "message": "errno is a string"},
    {"error": "internal", "message": "Call to undefined method Proxy::bnid()"},
    {"error": "unsupported", "message": "the proxy has no createSocket()"},
    {"error": "OSError", "errno": None, "message": "errno null is errno omitted"},
]


def send(sock: socket.socket, obj: object, fd: int | None = None) -> None:
    line = (json.dumps(obj) + "\n").encode()
    if fd is None:
        sock.sendall(line)
    else:
        rights = array.array("i", [fd]).tobytes()
        sock.sendmsg([line], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, rights)])


def requests(sock: socket.socket) -> Iterator[dict[str, Any]]:
    buf = b""
    while True:
        while b"\n" not in buf:
            chunk = sock.recv(65536)
            if not chunk:
                return
            buf += chunk
        line, buf = buf.split(b"\n", 1)
        yield json.loads(line)


def connect() -> socket.socket:
    ctl = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    ctl.connect(os.environ["FDPASS_ADAPTER_SOCKET"])
    return ctl


def worker(index: int, listeners: dict[int, socket.socket]) -> int:
    """A forked worker: its own connection, accept() on the inherited listener."""
    ctl = connect()
    send(ctl, {"hello": {"protocol": 1, "role": "worker", "index": index, "pid": os.getpid()}})
    held: dict[int, socket.socket] = {}
    for n, req in enumerate(requests(ctl)):
        op = req["op"] if n else "hello-reply"
        if op == "hello-reply":
            continue
        if op == "accept":
            listener = listeners.get(req["listener"])
            if listener is None:
                send(ctl, {"ok": False, "error": "OSError", "errno": 9, "message": "accept: EBADF"})
                continue
            try:
                conn, _ = listener.accept()
            except OSError as exc:
                error = {"error": "OSError", "errno": exc.errno, "message": f"accept: {exc}"}
                send(ctl, {"ok": False, **error})
                continue
            held[conn.fileno()] = conn
            send(ctl, {"ok": True, "result": {"fd": conn.fileno()}}, conn.fileno())
        elif op == "release":
            held.pop(req["fd"]).close()
            send(ctl, {"ok": True, "result": None})
        elif op == "close":
            for sock in [*held.values(), *listeners.values()]:
                sock.close()
            send(ctl, {"ok": True, "result": None})
        elif op == "is_supported":
            send(ctl, {"ok": True, "result": True})
        else:
            send(ctl, {"ok": False, "error": "OSError", "errno": 22, "message": f"{op}: worker"})
    return 0


def main() -> int:
    if MODE == "forks" and os.fork():
        time.sleep(30)
        return 0
    ctl = connect()
    if MODE == "no-hello":
        time.sleep(30)
        return 0
    if MODE == "garbage-hello":
        ctl.sendall(b"hello there\n")
        time.sleep(30)
        return 0
    hello = {
        "protocol": 3 if MODE == "protocol-3" else 1,
        "role": "master",
        "pid": os.getpid(),
        "language": "fake",
        "name": "fake-program",
        "capabilities": [] if MODE == "no-caps" else ["shared-listener"],
    }
    send(ctl, {"hello": hello})
    listeners: dict[int, socket.socket] = {}
    for n, req in enumerate(requests(ctl), start=0):
        if n == 0:
            if not req.get("ok"):
                return 2  # the adapter refused the hello
            continue
        op = req["op"]
        with contextlib.suppress(ChildProcessError):  # the master reaps its workers (SP-21)
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass
        if MODE == "exit-on-3" and n == 3:
            print("fake: exiting on request 3", file=sys.stderr, flush=True)
            return 3
        if MODE == "hang" and op == "create_socket":
            time.sleep(30)
        if MODE == "garbage" and op == "create_socket":
            ctl.sendall(b"<html>not json</html>\n")
            continue
        if MODE == "errors" and op == "create_socket":
            send(ctl, {"ok": False, **ERRORS[req["port"]]})
            continue
        if op == "is_supported":
            send(ctl, {"ok": True, "result": True})
        elif op == "create_socket":
            port, protocol = req["port"], req.get("protocol", "tcp")
            if not isinstance(port, int) or isinstance(port, bool):
                send(ctl, {"ok": False, "error": "TypeError", "message": "port: not an int"})
                continue
            if not 0 <= port <= 65535 or protocol not in ("tcp", "http", "websocket"):
                send(ctl, {"ok": False, "error": "ValueError", "message": "bad port/protocol"})
                continue
            try:
                lst = socket.create_server(("127.0.0.1", port))
            except OSError as exc:
                message = f"create_socket: bind() or listen() failed: {exc.strerror}"
                send(ctl, {"ok": False, "error": "OSError", "errno": exc.errno, "message": message})
                continue
            listeners[lst.fileno()] = lst
            if MODE == "no-fd":
                send(ctl, {"ok": True, "result": {"fd": lst.fileno()}})
            elif MODE == "wrong-fd":
                send(ctl, {"ok": True, "result": {"fd": 0}}, lst.fileno())
            else:
                send(ctl, {"ok": True, "result": {"fd": lst.fileno()}}, lst.fileno())
        elif op == "release":
            listeners.pop(req["fd"]).close()
            send(ctl, {"ok": True, "result": None})
        elif op == "fork_worker":
            pid = os.fork()
            if pid == 0:
                ctl.close()  # the master's connection is the master's alone
                os._exit(worker(req["index"], listeners))
            send(ctl, {"ok": True, "result": {"pid": pid}})
        elif op == "accept":
            send(ctl, {"ok": False, "error": "OSError", "errno": 9, "message": "accept: EBADF"})
        elif op == "close":
            for lst in listeners.values():
                lst.close()
            listeners.clear()
            send(ctl, {"ok": True, "result": None})
        else:
            send(ctl, {"ok": False, "error": "ValueError", "message": f"unknown op {op}"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
