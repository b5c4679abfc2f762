"""ExecProxy against a scripted program: the handshake, error kinds, and every way a
program can fail (die, hang, garbage), each as one line naming the request."""

from __future__ import annotations

import errno
import gc
import os
import signal
import socket
import sys
import time
from pathlib import Path

import psutil  # type: ignore[import-untyped, unused-ignore]
import pytest

from fdpass_conformance.adapter import (
    ExecBackend,
    ExecFactory,
    ExecProxy,
    ProgramDefect,
    ProgramError,
    UnsupportedMethod,
    exec_impl,
)
from fdpass_conformance.harness.backends import InProcessBackend, backend_for
from fdpass_conformance.harness.server import ProxyServer
from fdpass_conformance.leaks.ports import port_is_free
from fdpass_conformance.loading import ImplError, load_impl

from .fake_program import ERRORS

FAKE = str(Path(__file__).with_name("fake_program.py"))
DEADLINE = 2.0


def fake(monkeypatch: pytest.MonkeyPatch, mode: str, deadline: float = DEADLINE) -> ExecFactory:
    monkeypatch.setenv("FAKE_MODE", mode)
    return exec_impl([sys.executable, FAKE], deadline=deadline)


def one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text, f"not one line: {text!r}"
    return text


def gone(pid: int, timeout: float = 5.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.01)
    return False


def test_the_factory_starts_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    factory = fake(monkeypatch, "ok")
    fds = len(os.listdir("/proc/self/fd"))
    proxies = [factory() for _ in range(3)]
    assert len(os.listdir("/proc/self/fd")) == fds, "constructing a proxy opened fds"
    assert not psutil.Process().children(), "constructing a proxy started a process"
    for proxy in proxies:
        proxy.close()  # never started: nothing to do, nothing started by it
    assert not psutil.Process().children()


def test_calls_reach_the_program(monkeypatch: pytest.MonkeyPatch) -> None:
    factory = fake(monkeypatch, "ok")
    assert (factory.language, factory.protocol, factory.name) == ("fake", 1, "fake-program")
    proxy = factory()
    assert type(proxy) is ExecProxy, "a shared-listener program gets no dispatch"
    assert proxy.is_supported() is True
    pid = proxy.program_master_pid()
    listener = proxy.create_socket(0)
    seen = backend_for(factory).describe_socket(listener)
    assert seen == {"pid": pid, "cloexec": True, "nonblock": False}, seen
    port = listener.getsockname()[1]
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        pass
    proxy.close()
    proxy.close()
    assert listener.fileno() == -1, "close() left our copy of the listener open"
    assert port_is_free(port), "the program kept the listener after close()"


def test_the_backend_is_chosen_by_the_factory(monkeypatch: pytest.MonkeyPatch) -> None:
    """An exec factory's servers reach the program through the exec backend; any other
    factory (a class, a function) runs in the harness's processes."""
    from fdpass_conformance.reference import MasterProxy

    factory = fake(monkeypatch, "ok")
    assert isinstance(backend_for(factory), ExecBackend)
    assert ProxyServer(factory).exec_impl
    for other in (MasterProxy, lambda: MasterProxy()):
        assert isinstance(backend_for(other), InProcessBackend)
        assert not ProxyServer(other).exec_impl


def test_a_master_reaped_by_the_harness_reports_how_it_ended(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The harness's master reaps any child (waitpid(-1)), the program's master included;
    what it tells the backend is what the proxy's error line then reports."""
    factory = fake(monkeypatch, "ok")
    proxy = factory()
    pid = proxy.program_master_pid()
    os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)  # as Master._reap does, before the proxy looks
    backend_for(factory).child_reaped(pid, status)
    with pytest.raises(ProgramError) as info:
        proxy.is_supported()
    assert "killed by SIGKILL" in str(info.value), str(info.value)
    proxy.close()


@pytest.mark.parametrize("k", range(9))
def test_error_replies_are_reraised_as_named(monkeypatch: pytest.MonkeyPatch, k: int) -> None:
    proxy = fake(monkeypatch, "errors")()
    expected = {
        "OSError": OSError,
        "TimeoutError": TimeoutError,
        "EOFError": EOFError,
        "ValueError": ValueError,
        "TypeError": TypeError,
        "OverflowError": OverflowError,
        "IndexError": IndexError,
        "RuntimeError": RuntimeError,
    }[ERRORS[k]["error"]]
    with pytest.raises(expected) as info:
        proxy.create_socket(k)
    assert str(ERRORS[k]["message"]) in str(info.value)
    if "errno" in ERRORS[k]:
        assert info.value.errno == ERRORS[k]["errno"]  # type: ignore[attr-defined]
    if k == 0:
        assert isinstance(info.value, BrokenPipeError), "EPIPE makes a BrokenPipeError"
    assert proxy.is_supported() is True, "an error reply is an answer, not a failure"
    proxy.close()


@pytest.mark.parametrize("k", [9, 10], ids=["unknown-kind", "string-errno"])
def test_malformed_error_replies_fail_the_program(monkeypatch: pytest.MonkeyPatch, k: int) -> None:
    proxy = fake(monkeypatch, "errors")()
    pid = proxy.program_master_pid()
    with pytest.raises(ProgramError) as info:
        proxy.create_socket(k)
    text = one_line(info.value)
    assert f"master (pid {pid}) broke the protocol in its reply to 'create_socket'" in text
    assert gone(pid), "a program that broke the protocol is still running"


def test_garbage_is_one_line_and_the_program_is_killed(monkeypatch: pytest.MonkeyPatch) -> None:
    proxy = fake(monkeypatch, "garbage")()
    pid = proxy.program_master_pid()
    with pytest.raises(ProgramError) as info:
        proxy.create_socket(0)
    text = one_line(info.value)
    assert "broke the protocol in its reply to 'create_socket': not JSON" in text
    assert "killed it" in text and gone(pid)
    with pytest.raises(ProgramError, match="failed earlier"):
        proxy.is_supported()
    proxy.close()  # after a failure: releases what is ours, raises nothing


def test_a_hang_ends_at_the_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    proxy = fake(monkeypatch, "hang", deadline=0.5)()
    pid = proxy.program_master_pid()
    started = time.monotonic()
    with pytest.raises(ProgramError) as info:
        proxy.create_socket(0)
    took = time.monotonic() - started
    assert took < 3.0, f"a hung program held the call for {took:.1f}s"
    text = one_line(info.value)
    assert "did not answer 'create_socket' within 0.5s; killed it" in text
    assert gone(pid)


def test_a_death_names_the_request_and_the_status(monkeypatch: pytest.MonkeyPatch) -> None:
    proxy = fake(monkeypatch, "exit-on-3")()
    proxy.is_supported()
    proxy.is_supported()
    with pytest.raises(ProgramError) as info:
        proxy.is_supported()
    text = one_line(info.value)
    assert "ended during 'is_supported' (exit status 3; stderr: fake: exiting on request 3)" in (
        text
    ), text


@pytest.mark.parametrize(
    ("mode", "problem"),
    [
        ("no-fd", "0 fds came with the reply, expected exactly 1"),
        ("wrong-fd", "the reply names fd 0, but /proc/"),
    ],
)
def test_returned_sockets_are_checked(
    monkeypatch: pytest.MonkeyPatch, mode: str, problem: str
) -> None:
    proxy = fake(monkeypatch, mode)()
    proxy.program_master_pid()  # started: our end of its connection is open from here on
    fds = len(os.listdir("/proc/self/fd"))
    with pytest.raises(ProgramError) as info:
        proxy.create_socket(0)
    assert problem in one_line(info.value)
    assert len(os.listdir("/proc/self/fd")) == fds, "the fd of a rejected reply was kept"


@pytest.mark.parametrize(
    ("mode", "problem"),
    [
        ("garbage-hello", "broke the protocol in its hello: not JSON"),
        ("no-hello", "sent no hello within 0.5s"),
        (
            "protocol-3",
            "speaks adapter protocol 3, which this toolkit does not know (it speaks 1, 2): "
            "use a kit for protocol 2 or a newer toolkit; killed it",
        ),
        ("no-caps", "exactly one of fd-passing, shared-listener is required"),
        ("forks", "said hello as master pid"),
    ],
)
def test_a_bad_handshake_is_one_line(
    monkeypatch: pytest.MonkeyPatch, mode: str, problem: str
) -> None:
    with pytest.raises(ProgramError) as info:
        fake(monkeypatch, mode, deadline=0.5)
    assert problem in one_line(info.value)


def test_a_missing_program_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ProgramError, match="not found"):
        exec_impl(str(tmp_path / "nothing-here"))
    (tmp_path / "not-executable").write_text("#!/bin/sh\n")
    with pytest.raises(ProgramError, match="is not an executable file"):
        exec_impl(str(tmp_path / "not-executable"))


def test_arguments_json_cannot_carry_are_a_type_error(monkeypatch: pytest.MonkeyPatch) -> None:
    proxy = fake(monkeypatch, "ok")()
    with pytest.raises(TypeError, match="not representable in JSON"):
        proxy.create_socket(object())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="not representable in JSON"):
        proxy.create_socket(float("nan"))  # type: ignore[arg-type]
    assert proxy.is_supported() is True, "the program never saw the bad request"
    proxy.close()


def test_dropping_a_proxy_stops_its_program(monkeypatch: pytest.MonkeyPatch) -> None:
    proxy = fake(monkeypatch, "ok")()
    pid = proxy.program_master_pid()
    del proxy
    gc.collect()
    assert gone(pid), "the program outlived its proxy"


def test_load_impl_knows_the_language(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_MODE", "ok")
    impl = load_impl(f"exec:{sys.executable} {FAKE}")
    assert (impl.id, impl.language, impl.protocol, impl.fd_passing) == (
        "fake-program",
        "fake",
        1,
        False,
    )
    assert load_impl("reference:MasterProxy").language == "python"


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("exec:", "no command after 'exec:'"),
        ("exec:'unterminated", "cannot split the command"),
        ("exec:/nonexistent/program --flag", "exec: '/nonexistent/program' not found"),
    ],
)
def test_load_impl_problems_are_one_line(value: str, problem: str) -> None:
    with pytest.raises(ImplError) as info:
        load_impl(value)
    text = one_line(info.value)
    assert text.startswith(f"--fdpass-impl={value}: ") and problem in text, text


def test_errno_values_survive(monkeypatch: pytest.MonkeyPatch) -> None:
    proxy = fake(monkeypatch, "errors")()
    with pytest.raises(TimeoutError) as info:
        proxy.create_socket(1)
    assert info.value.errno == errno.ETIMEDOUT
    proxy.close()


def test_an_internal_error_is_the_programs_defect_with_its_message(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    proxy = fake(monkeypatch, "errors")()
    pid = proxy.program_master_pid()
    with pytest.raises(ProgramDefect) as info:
        proxy.create_socket(11)
    text = one_line(info.value)
    assert text == (
        f"exec program 'fake-program' master (pid {pid}) reported an internal error (a bug "
        "in the program) during 'create_socket': Call to undefined method Proxy::bnid()"
    ), text
    assert isinstance(info.value, AssertionError), "a defect of the implementation fails it"
    assert proxy.is_supported() is True, "the program answered: it is not killed"
    proxy.close()


def test_an_unsupported_method_is_a_not_implemented_error(monkeypatch: pytest.MonkeyPatch) -> None:
    proxy = fake(monkeypatch, "errors")()
    pid = proxy.program_master_pid()
    with pytest.raises(UnsupportedMethod) as info:
        proxy.create_socket(12)
    assert isinstance(info.value, NotImplementedError)
    assert not isinstance(info.value, ProgramError), "a missing method is no protocol breach"
    assert one_line(info.value) == (
        f"exec program 'fake-program' master (pid {pid}) does not implement 'create_socket': "
        "the proxy has no createSocket()"
    )
    assert proxy.is_supported() is True
    proxy.close()


def test_errno_null_means_no_errno(monkeypatch: pytest.MonkeyPatch) -> None:
    proxy = fake(monkeypatch, "errors")()
    for k in (8, 13):  # omitted, null
        with pytest.raises(OSError) as info:
            proxy.create_socket(k)
        assert info.value.errno is None
        assert str(info.value) == ERRORS[k]["message"]
    proxy.close()
