"""``adapter.program`` below ExecProxy: the hello, one call, and the program's end, each
malformed in the ways a program in another language gets them wrong.

The peer is the other end of a real Unix socketpair (fds really passed with
SCM_RIGHTS), so every check runs on what the kernel delivered; no program is
started except where the test says so.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from fdpass_conformance.adapter.program import (
    DEFAULT_DEADLINE,
    ENV_DEADLINE,
    Call,
    Hello,
    Launch,
    WorkerLink,
    _call,
    _recv_hello,
    default_deadline,
    still_holds,
)
from fdpass_conformance.adapter.wire import Channel, ProgramError, ProtocolViolation

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the adapter reads /proc"),
]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("", DEFAULT_DEADLINE),
        ("2.5", 2.5),
        ("soon", DEFAULT_DEADLINE),
        ("0", DEFAULT_DEADLINE),
        ("-3", DEFAULT_DEADLINE),
    ],
)
def test_deadline_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, raw: str, expected: float
) -> None:
    monkeypatch.setenv(ENV_DEADLINE, raw)
    assert default_deadline() == expected


def _hello(**body: Any) -> bytes:
    return json.dumps({"hello": body}).encode()


GOOD = {"protocol": 1, "role": "master", "pid": 10, "capabilities": ["fd-passing"]}


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b'{"ok": true}', 'the first line is not {"hello": {...}}'),
        (_hello(**{**GOOD, "protocol": "1"}), "hello without an integer protocol version"),
        (_hello(**{**GOOD, "protocol": True}), "hello without an integer protocol version"),
        (
            _hello(**{**GOOD, "role": "boss"}),
            'hello role must be "master" or "worker", got \'boss\'',
        ),
        (_hello(**{**GOOD, "pid": None}), "hello without an integer pid"),
        (_hello(**{**GOOD, "role": "worker"}), "worker hello without an integer index"),
        (
            _hello(**{**GOOD, "capabilities": "fd-passing"}),
            "capabilities must be a list of strings",
        ),
        (_hello(**{**GOOD, "capabilities": [1]}), "capabilities must be a list of strings"),
        (_hello(**{**GOOD, "language": 3}), "hello language and name must be strings"),
    ],
)
def test_malformed_hellos_are_named(line: bytes, message: str) -> None:
    with pytest.raises(ProtocolViolation, match=re.escape(message)):
        Hello.parse(line)


def test_a_good_hello() -> None:
    hello = Hello.parse(_hello(**GOOD, language="C", name="acme"))
    assert hello == Hello(1, "master", 10, "C", "acme", ("fd-passing",), None)
    assert hello.fd_passing
    worker = Hello.parse(_hello(protocol=1, role="worker", pid=11, index=2))
    assert (worker.index, worker.fd_passing) == (2, False)


@pytest.fixture
def pair() -> Iterator[tuple[Channel, socket.socket]]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    chan = Channel(ours, lambda: None)
    try:
        yield chan, theirs
    finally:
        chan.close()
        theirs.close()


def _send(sock: socket.socket, obj: object, fds: list[int] | None = None) -> None:
    data = json.dumps(obj).encode() + b"\n"
    if fds:
        socket.send_fds(sock, [data], fds)
    else:
        sock.sendall(data)


def _open_fds() -> set[int]:
    return {int(n) for n in os.listdir("/proc/self/fd")}


def test_fds_with_the_hello_are_closed_and_refused(pair: tuple[Channel, socket.socket]) -> None:
    chan, theirs = pair
    before = _open_fds()
    _send(theirs, {"hello": GOOD}, [theirs.fileno()])
    with pytest.raises(ProtocolViolation, match="fds came with the hello"):
        _recv_hello(chan, time.monotonic() + 5)
    assert _open_fds() == before


class Trouble:
    """``on_trouble``: records the kind and makes the ProgramError the caller raises."""

    def __init__(self) -> None:
        self.kinds: list[str] = []

    def __call__(self, kind: str, what: str) -> ProgramError:
        self.kinds.append(kind)
        return ProgramError(f"peer {what}")


@pytest.mark.parametrize(
    ("reply", "with_fd", "want_fd", "message"),
    [
        (b"not json\n", False, False, "broke the protocol in its reply to 'listen'"),
        ({"ok": False, "error": "OSError", "message": "m"}, True, False, "fds came with an error"),
        ({"ok": True, "result": 1}, True, False, "fds came with the reply to 'listen'"),
        ({"ok": True, "result": 7}, True, True, 'the result must be {"fd": N}, got 7'),
        ({"ok": True, "result": {"fd": 3}}, False, True, "0 fds came with the reply, expected"),
    ],
)
def test_replies_that_break_the_protocol_leak_no_fd(
    pair: tuple[Channel, socket.socket],
    reply: object,
    with_fd: bool,
    want_fd: bool,
    message: str,
) -> None:
    chan, theirs = pair
    before = _open_fds()
    if isinstance(reply, bytes):
        theirs.sendall(reply)
    else:
        _send(theirs, reply, [theirs.fileno()] if with_fd else None)
    trouble = Trouble()
    with pytest.raises(ProgramError) as info:
        _call(chan, Call("peer", "listen", 5.0), {}, want_fd, trouble, os.getpid())
    assert message in str(info.value)
    assert trouble.kinds == ["garbage"]
    assert _open_fds() == before  # a passed fd that is refused is closed
    assert json.loads(theirs.recv(4096))["op"] == "listen"


def test_an_fd_reply_naming_another_fd_is_refused(pair: tuple[Channel, socket.socket]) -> None:
    """The result names the program's own copy, checked in /proc: here we play the program."""
    chan, theirs = pair
    other = socket.socket()
    try:
        _send(theirs, {"ok": True, "result": {"fd": other.fileno()}}, [theirs.fileno()])
        with pytest.raises(ProgramError, match=f"the reply names fd {other.fileno()}, but"):
            _call(chan, Call("peer", "accept", 5.0), {}, True, Trouble(), os.getpid())
        _send(theirs, {"ok": True, "result": {"fd": theirs.fileno()}}, [theirs.fileno()])
        result, fd = _call(chan, Call("peer", "accept", 5.0), {}, True, Trouble(), os.getpid())
        try:
            assert result == {"fd": theirs.fileno()}
            assert still_holds(os.getpid(), theirs.fileno(), fd)
            assert not still_holds(os.getpid(), other.fileno(), fd)
            assert not still_holds(2**22, 3, fd)  # no such process
        finally:
            os.close(fd)
    finally:
        other.close()


def test_a_broken_worker_link_refuses_further_calls(pair: tuple[Channel, socket.socket]) -> None:
    chan, theirs = pair
    child = os.fork()
    if child == 0:  # pragma: no cover - child
        time.sleep(30)
        os._exit(0)
    try:
        link = WorkerLink(0, child, chan, "prog")
        theirs.sendall(b"garbage\n")
        with pytest.raises(ProgramError, match=r"prog worker 0 \(pid \d+\) broke the protocol"):
            link.call("accept", {"listener": 1})
        assert str(link.broken).startswith("broke the protocol")
        # a garbling worker is killed: nothing sane can follow
        assert os.waitpid(child, 0)[1] == signal.SIGKILL
        with pytest.raises(ProgramError, match="failed earlier: broke the protocol"):
            link.call("accept", {"listener": 1})
    finally:
        try:
            os.kill(child, signal.SIGKILL)
            os.waitpid(child, 0)
        except (ProcessLookupError, ChildProcessError):
            pass


# -- a started program's end -------------------------------------------------------------


def _start(code: str, seconds: float = 5.0) -> Launch:
    return Launch.start([sys.executable, "-c", code], "prog", seconds)


def test_a_program_that_exits_before_connecting_is_named_with_its_stderr() -> None:
    with pytest.raises(ProgramError) as info:
        _start("import sys; sys.stderr.write('no config\\n'); sys.exit(4)")
    text = str(info.value)
    assert text.startswith("prog master (pid ")
    assert "ended before it could connect to $FDPASS_ADAPTER_SOCKET" in text
    assert text.endswith("(exit status 4; stderr: no config)")


def test_a_program_that_never_connects_is_killed_at_the_deadline() -> None:
    with pytest.raises(ProgramError) as info:
        _start("import time; time.sleep(30)", seconds=0.5)
    assert "did not connect to $FDPASS_ADAPTER_SOCKET within the deadline; killed it" in str(
        info.value
    )


CONNECT_THEN_EXIT = (
    "import os, socket, sys\n"
    "s = socket.socket(socket.AF_UNIX)\n"
    "s.connect(os.environ['FDPASS_ADAPTER_SOCKET'])\n"
    "sys.exit(5)\n"
)


def test_a_program_that_exits_before_its_hello() -> None:
    with pytest.raises(ProgramError) as info:
        _start(CONNECT_THEN_EXIT)
    assert str(info.value).endswith("ended before its hello (exit status 5)")


def test_the_status_of_a_master_reaped_by_the_harness_is_used() -> None:
    """MOCK: the harness's master reaps any child (waitpid(-1)) and the exec backend
    records it in the factory's record, which the Launch reads; here a plain dict."""
    import types

    launch = Launch.__new__(Launch)
    launch.status = None
    record: dict[int, int] = {}
    launch.reaped = record
    launch.log = open(os.devnull, "rb")  # noqa: SIM115
    child = os.fork()
    if child == 0:  # pragma: no cover - child
        os._exit(6)
    _, status = os.waitpid(child, 0)  # reaped "by the harness"
    launch.proc = types.SimpleNamespace(pid=child, returncode=None)  # type: ignore[assignment]
    try:
        assert launch.end() == "it exited; status unknown"
        record[child] = status
        assert launch.end() == "exit status 6"
        assert launch.proc.returncode == 6
        launch.log.close()
        assert launch.stderr_tail() == ""  # a closed log has no tail, and no error
    finally:
        launch.log.close()
