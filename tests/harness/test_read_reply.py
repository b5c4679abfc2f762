"""How ``read_reply`` judges the end of a connection, on real socket pairs."""

from __future__ import annotations

import json
import socket
import time

import pytest

from fdpass_conformance.harness import server
from fdpass_conformance.harness.server import read_reply

pytestmark = pytest.mark.timeout(60)

ANSWER = json.dumps(
    {
        "pid": 1,
        "index": 0,
        "peer": ["127.0.0.1", 1],
        "local": ["127.0.0.1", 2],
        "cloexec": True,
        "nonblock": False,
        "data": "ping",
    }
).encode()


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    """A real loopback TCP connection, as the suites' clients have."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname(), timeout=5.0)
        worker, _ = listener.accept()
    return client, worker


def test_answered_and_closed_is_eof() -> None:
    client, worker = tcp_pair()
    with client, worker:
        worker.sendall(ANSWER + b"\n")
        worker.close()
        reply = read_reply(client, b"", timeout=5.0)  # the request went before
    assert (reply.answered, reply.end, reply.data) == (True, "eof", "ping")


def test_an_answer_never_followed_by_the_end_costs_the_grace_not_the_timeout() -> None:
    """A copy of the connection kept elsewhere (SP-11): the end never comes."""
    client, worker = tcp_pair()
    with client, worker:
        worker.sendall(ANSWER + b"\n")
        started = time.monotonic()
        reply = read_reply(client, b"ping", timeout=30.0)
        took = time.monotonic() - started
    assert (reply.answered, reply.end) == (True, "timeout")
    assert took < 30.0 / 2, f"waited {took:.1f}s for an end that was not coming"
    assert took >= server.EOF_GRACE * 0.9


def test_no_answer_waits_the_whole_timeout() -> None:
    client, worker = tcp_pair()
    with client, worker:
        started = time.monotonic()
        reply = read_reply(client, b"ping", timeout=0.5)
        took = time.monotonic() - started
    assert (reply.answered, reply.end) == (False, "timeout")
    assert took >= 0.45


def test_reset_without_an_answer() -> None:
    client, worker = tcp_pair()
    with client:
        worker.close()
        reply = read_reply(client, b"ping", timeout=5.0)
    assert not reply.answered and reply.end in ("eof", "reset")


def test_eof_grace_zero_stops_at_the_answer() -> None:
    """For checks of who serves: the answer is enough, the end is SP-11's to judge."""
    client, worker = tcp_pair()
    with client, worker:
        worker.sendall(ANSWER + b"\n")
        started = time.monotonic()
        reply = read_reply(client, b"ping", timeout=30.0, eof_grace=0)
        took = time.monotonic() - started
    assert (reply.answered, reply.end, reply.index) == (True, "open", 0)
    assert took < server.EOF_GRACE, f"waited {took:.2f}s past the answer"
