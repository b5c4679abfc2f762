"""PatchedErrno: counting, restoration and errno on real sockets and real SysV calls."""

from __future__ import annotations

import errno
import os
import socket
import sys
import types
from collections.abc import Iterator

import pytest

from fdpass_conformance import sysv
from fdpass_conformance.faults.pylevel import PatchedErrno, resolve
from fdpass_conformance.processes import call_in_child

ORIGINAL_SOCKETPAIR = socket.socketpair


def _outcomes(fn: object, n: int) -> list[str]:
    """Call ``fn`` n times; "ok" or the errno name of each call (closing what it made)."""
    assert callable(fn)
    out = []
    for _ in range(n):
        try:
            made = fn()
        except OSError as exc:
            out.append(errno.errorcode[exc.errno or 0])
            continue
        for sock in made if isinstance(made, tuple) else ():
            sock.close()
        out.append("ok")
    return out


@pytest.mark.parametrize(
    ("after", "times", "expected"),
    [
        (0, 1, ["EMFILE", "ok", "ok", "ok", "ok"]),
        (1, 2, ["ok", "EMFILE", "EMFILE", "ok", "ok"]),
        (3, None, ["ok", "ok", "ok", "EMFILE", "EMFILE"]),
        (5, 1, ["ok", "ok", "ok", "ok", "ok"]),
    ],
)
def test_calls_after_plus_one_to_after_plus_times_fail(
    after: int, times: int | None, expected: list[str]
) -> None:
    patch = PatchedErrno("socket.socketpair", "EMFILE", after=after, times=times)
    with patch:
        assert _outcomes(lambda: socket.socketpair(), 5) == expected
    assert patch.calls == 5
    assert patch.injected == expected.count("EMFILE")
    assert socket.socketpair is ORIGINAL_SOCKETPAIR


def test_method_patch_keeps_errno_subclass_and_is_removed_after() -> None:
    a, b = socket.socketpair()
    try:
        assert "sendmsg" not in vars(socket.socket)  # inherited from _socket.socket
        with PatchedErrno("socket.socket.sendmsg", "EPIPE", after=1) as patch:
            assert a.sendmsg([b"1"]) == 1
            with pytest.raises(BrokenPipeError) as info:
                a.sendmsg([b"2"])
            assert info.value.errno == errno.EPIPE
            assert info.value.strerror == os.strerror(errno.EPIPE)
            assert a.sendmsg([b"3"]) == 1
        assert (patch.calls, patch.injected) == (3, 1)
        assert "sendmsg" not in vars(socket.socket)
        assert a.sendmsg([b"4"]) == 1
        assert b.recv(16) == b"134"
    finally:
        a.close()
        b.close()


def test_numeric_errno_and_send_fds() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    r, w = os.pipe()
    try:
        with PatchedErrno("socket.send_fds", errno.ETOOMANYREFS) as patch:
            with pytest.raises(OSError) as info:
                socket.send_fds(a, [b"x"], [r])
            assert info.value.errno == errno.ETOOMANYREFS
            socket.send_fds(a, [b"x"], [r])
        assert patch.injected == 1
        _msg, fds, _flags, _ = socket.recv_fds(b, 1, 1)
        assert len(fds) == 1
        os.close(fds[0])
    finally:
        for fd in (r, w):
            os.close(fd)
        a.close()
        b.close()


@pytest.mark.timeout(30)
def test_accept_through_the_private_accept() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    clients = []
    try:
        port = listener.getsockname()[1]
        with PatchedErrno("socket.socket._accept", "EMFILE") as patch:
            clients.append(socket.create_connection(("127.0.0.1", port), timeout=5))
            with pytest.raises(OSError) as info:
                listener.accept()
            assert info.value.errno == errno.EMFILE
            conn, _addr = listener.accept()  # the connection waited in the backlog
            conn.close()
        assert (patch.calls, patch.injected) == (2, 1)
    finally:
        for client in clients:
            client.close()
        listener.close()


@pytest.mark.timeout(30)
def test_msgget_enospc_keeps_errno_and_creates_nothing() -> None:
    queue: sysv.MessageQueue | None = None
    try:
        with PatchedErrno("fdpass_conformance.sysv.msgget", "ENOSPC") as patch:
            with pytest.raises(OSError) as info:
                sysv.MessageQueue()
            assert info.value.errno == errno.ENOSPC
            queue = sysv.MessageQueue()  # the 2nd call reaches the kernel
        assert (patch.calls, patch.injected) == (2, 1)
    finally:
        if queue is not None:
            queue.remove()


def test_from_import_binding_is_not_patched() -> None:
    """The documented limitation: a name bound by ``from x import f`` before the patch."""
    from socket import socketpair as bound_early

    with PatchedErrno("socket.socketpair", "EMFILE", times=None) as patch:
        a, b = bound_early()
        a.close()
        b.close()
    assert patch.calls == 0


def test_patches_of_one_target_nest_in_reverse_order() -> None:
    outer = PatchedErrno("socket.socketpair", "EMFILE", times=None)
    inner = PatchedErrno("socket.socketpair", "ENFILE", times=None)
    outer.start()
    try:
        inner.start()
        try:
            assert _outcomes(socket.socketpair, 1) == ["ENFILE"]
            with pytest.raises(RuntimeError, match="reverse order"):
                outer.stop()
        finally:
            inner.stop()
        assert _outcomes(socket.socketpair, 1) == ["EMFILE"]
    finally:
        outer.stop()
    assert socket.socketpair is ORIGINAL_SOCKETPAIR
    outer.stop()  # idempotent


@pytest.fixture
def fake_module(monkeypatch: pytest.MonkeyPatch) -> Iterator[types.ModuleType]:
    """A throwaway importable module with a class holding static and class methods."""

    class Target:
        value = 7

        @staticmethod
        def static(x: int) -> int:
            return x + 1

        @classmethod
        def klass(cls, x: int) -> int:
            return cls.value + x

    module = types.ModuleType("fdpass_fake_target")
    module.Target = Target  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "fdpass_fake_target", module)
    yield module


def test_static_and_class_methods(fake_module: types.ModuleType) -> None:
    target = fake_module.Target
    with PatchedErrno("fdpass_fake_target.Target.static", "EIO", after=1) as static:
        assert target.static(1) == 2
        with pytest.raises(OSError) as info:
            target().static(1)  # through an instance: still no self argument
        assert info.value.errno == errno.EIO
        assert target.static(2) == 3
    assert static.calls == 3
    with PatchedErrno("fdpass_fake_target.Target.klass", "EIO") as klass:
        with pytest.raises(OSError, match="Input/output error"):
            target.klass(1)
        assert target().klass(1) == 8  # cls is still bound
    assert klass.calls == 2
    assert isinstance(vars(target)["static"], staticmethod)
    assert isinstance(vars(target)["klass"], classmethod)
    assert target.static(1) == 2


def test_patch_is_inherited_by_a_forked_child_with_its_counters() -> None:
    with PatchedErrno("socket.socketpair", "EMFILE", after=1) as patch:
        assert _outcomes(socket.socketpair, 1) == ["ok"]
        result = call_in_child(lambda: ",".join(_outcomes(socket.socketpair, 2)).encode())
        assert result.output == b"EMFILE,ok"
        assert _outcomes(socket.socketpair, 2) == ["EMFILE", "ok"]
    assert patch.calls == 3


@pytest.mark.parametrize(
    ("target", "kwargs", "exc", "message"),
    [
        ("socket.socketpair", {"error": "EFOO"}, ValueError, "unknown errno name 'EFOO'"),
        ("socket.socketpair", {"error": "EMFILE", "after": -1}, ValueError, "after must be"),
        ("socket.socketpair", {"error": "EMFILE", "times": 0}, ValueError, "times must be"),
        ("socket.nope", {"error": "EMFILE"}, ValueError, "does not exist"),
        ("nosuchmodule_xyz.f", {"error": "EMFILE"}, ValueError, "no importable module"),
        ("socket", {"error": "EMFILE"}, ValueError, "dotted path"),
        ("socket.AF_UNIX", {"error": "EMFILE"}, ValueError, "not callable"),
        ("_socket.socket.sendmsg", {"error": "EMFILE"}, TypeError, "cannot patch"),
    ],
)
def test_bad_arguments_fail_in_one_line(
    target: str, kwargs: dict[str, object], exc: type[Exception], message: str
) -> None:
    with pytest.raises(exc, match=message) as info:
        PatchedErrno(target, **kwargs).start()  # type: ignore[arg-type]
    assert "\n" not in str(info.value)


def test_resolve_finds_the_defining_object() -> None:
    assert resolve("socket.socket.sendmsg") == (socket.socket, "sendmsg")
    assert resolve("fdpass_conformance.sysv.msgget") == (sysv, "msgget")


def test_eintr_is_refused_because_python_never_sees_it() -> None:
    with pytest.raises(ValueError, match="PEP 475"):
        PatchedErrno("socket.socket.sendmsg", "EINTR")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="MSG_NOSIGNAL is Linux's")
@pytest.mark.parametrize(("flags", "dies"), [(0, True), (socket.MSG_NOSIGNAL, False)])
def test_epipe_kills_a_sender_without_msg_nosignal_at_sig_dfl(flags: int, dies: bool) -> None:
    """As the kernel does: EPIPE comes with SIGPIPE unless the send passed MSG_NOSIGNAL."""
    import signal

    def child() -> bytes:
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
        a, _b = socket.socketpair()
        with PatchedErrno("socket.socket.sendmsg", "EPIPE"):
            try:
                a.sendmsg([b"x"], [], flags)
            except BrokenPipeError:
                return b"raised"
        return b"returned"

    result = call_in_child(child, timeout=10.0)
    if dies:
        assert result.status == -signal.SIGPIPE, result
    else:
        assert (result.status, result.output) == (0, b"raised"), result
