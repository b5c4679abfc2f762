"""The adapter kits (examples/php/fdpass_adapter.php, examples/c-masterproxy/fdpass_adapter.c)
against the protocol's edge cases, through the real adapter: an error without errno, a bug
inside the program, a method the proxy lacks, a program blocked in accept, and one that
dies between calls. Each kit runs a small proxy that goes wrong on purpose (kit_edge.*).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fdpass_conformance.adapter import (
    ExecFactory,
    ProgramDefect,
    ProgramError,
    UnsupportedMethod,
    exec_impl,
)
from fdpass_conformance.adapter.program import Launch
from fdpass_conformance.adapter.wire import encode
from fdpass_conformance.harness.backends import backend_for

from .test_examples import C_DIR, CC, PHP, build, needs_cc, needs_php
from .test_proxy import gone

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the adapter reads /proc"),
]

HERE = Path(__file__).resolve().parent
DEADLINE = 5.0


@pytest.fixture(scope="module")
def c_edge(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    if CC is None:
        pytest.skip("needs a C compiler (cc)")
    out = tmp_path_factory.mktemp("kit") / "kit_edge"
    return [
        str(build(out, f"-I{C_DIR}", sources=[HERE / "kit_edge.c", C_DIR / "fdpass_adapter.c"]))
    ]


@pytest.fixture(params=[pytest.param("php", marks=needs_php), pytest.param("c", marks=needs_cc)])
def edge(request: pytest.FixtureRequest) -> list[str]:
    """The argv of the edge program on one kit."""
    if request.param == "php":
        assert PHP is not None
        return [PHP, str(HERE / "kit_edge.php")]
    argv: list[str] = request.getfixturevalue("c_edge")
    return argv


def factory(
    argv: list[str], monkeypatch: pytest.MonkeyPatch, cap: str = "", mode: str = ""
) -> ExecFactory:
    monkeypatch.setenv("EDGE_CAP", cap)
    monkeypatch.setenv("EDGE_MODE", mode)
    return exec_impl(argv, deadline=DEADLINE)


def test_the_kits_speak_protocol_2(edge: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    made = factory(edge, monkeypatch)
    assert made.protocol == 2
    assert made.language == ("php" if "php" in edge[0] else "c")


def test_an_error_without_errno_is_an_oserror_whose_errno_is_none(
    edge: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy = factory(edge, monkeypatch)()
    with pytest.raises(OSError) as info:
        proxy.create_socket(1)
    assert info.value.errno is None, "the kit made up an errno"
    assert "create_socket: a failure the library gives no errno for" in str(info.value)
    proxy.close()


def test_a_bug_in_the_program_is_its_defect_and_the_program_goes_on(
    edge: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy = factory(edge, monkeypatch)()
    pid = proxy.program_master_pid()
    with pytest.raises(ProgramDefect) as info:
        proxy.create_socket(2)
    text = str(info.value)
    assert "\n" not in text
    assert (
        f"master (pid {pid}) reported an internal error (a bug in the program) during "
        "'create_socket': " in text
    ), text
    bug = (
        "Call to undefined method EdgeProxy::noSuchMethod()"
        if "php" in edge[0]
        else ("the create_socket handler sent no reply")
    )
    assert bug in text, text
    assert proxy.is_supported() is True, "a defect is an answer: the program still serves"
    listener = proxy.create_socket(0)
    assert listener.getsockname()[1] > 0
    proxy.close()


def test_a_missing_method_is_unsupported(edge: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    proxy = factory(edge, monkeypatch, cap="fd-passing")()
    proxy.create_socket(0)
    with pytest.raises(UnsupportedMethod) as info:
        proxy.open_channels(2)  # type: ignore[attr-defined]
    assert isinstance(info.value, NotImplementedError)
    assert "does not implement 'open_channels'" in str(info.value)
    assert proxy.is_supported() is True
    proxy.close()


@pytest.fixture
def launch(edge: list[str], monkeypatch: pytest.MonkeyPatch) -> Iterator[Launch]:
    monkeypatch.setenv("EDGE_CAP", "shared-listener")
    monkeypatch.setenv("EDGE_MODE", "")
    started = Launch.start(edge, "edge", DEADLINE)
    try:
        yield started
    finally:
        started.terminate()


def test_a_worker_blocked_in_accept_serves_a_client_and_ends_with_the_adapter(
    launch: Launch,
) -> None:
    result, ours = launch.call("create_socket", {"port": 0, "protocol": "tcp"}, True, DEADLINE)
    listener = socket.socket(fileno=ours)
    try:
        port = listener.getsockname()[1]
        links = []
        for index in (0, 1):
            pid = launch.call("fork_worker", {"index": index}, seconds=DEADLINE)["pid"]
            links.append(launch.accept_worker(index, pid, DEADLINE))
        pids = [link.pid for link in links]
        # Worker 0 gets a client: its accept returns the connection, passed and checked.
        with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
            got, fd = links[0].call("accept", {"listener": result["fd"]}, True, DEADLINE)
            with socket.socket(fileno=fd) as conn:
                assert conn.getpeername() == client.getsockname()
            links[0].call("release", {"fd": got["fd"]}, seconds=DEADLINE)
        # Worker 1 blocks in accept (no client); it must end once the adapter goes away.
        links[1].chan.send(encode("accept", {"listener": result["fd"]}))
        time.sleep(0.3)
        assert not gone(pids[1], 0.0), "the worker did not block in accept"
        links[1].chan.close()
        assert gone(pids[1], 3.0), "a worker blocked in accept outlived the adapter's end"
        links[0].chan.close()
        assert gone(pids[0], 3.0)
    finally:
        listener.close()


def test_a_release_of_an_fd_not_held_is_ebadf(launch: Launch) -> None:
    with pytest.raises(OSError) as info:
        launch.call("release", {"fd": 999}, seconds=DEADLINE)
    assert info.value.errno == 9
    with pytest.raises(OSError) as info:
        launch.call("accept", {"listener": None}, True, DEADLINE)
    assert info.value.errno == 9, "a shared-listener accept without a listener is EBADF"
    with pytest.raises(UnsupportedMethod, match="'frobnicate'"):
        launch.call("frobnicate", {}, seconds=DEADLINE)


def test_a_program_that_dies_between_calls_is_one_line_at_the_next(
    edge: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy = factory(edge, monkeypatch, mode="die-between-calls")()
    pid = proxy.program_master_pid()
    assert proxy.is_supported() is True  # and SIGALRM kills it a second later
    assert gone(pid, 5.0)
    started = time.monotonic()
    with pytest.raises(ProgramError) as info:
        proxy.is_supported()
    assert time.monotonic() - started < 3.0
    assert f"master (pid {pid}) ended during 'is_supported' (killed by SIGALRM)" in str(
        info.value
    ), str(info.value)


def test_a_bug_in_a_workers_close_reaches_its_driver(
    edge: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """close() in the harness's worker (the driver, a forked process) raises the program
    worker's defect instead of swallowing it as "the worker is gone"."""
    made = factory(edge, monkeypatch, mode="close-bug")
    proxy = made()
    proxy.create_socket(0)
    with backend_for(made).spawn_worker(proxy, 0):  # the harness's own way to fork a driver
        child = os.fork()
        if child == 0:  # pragma: no cover - the driver
            code = 3
            try:
                assert proxy.is_supported() is True  # the driver takes worker 0's connection
                proxy.close()
                code = 1
            except ProgramDefect as exc:
                code = 0 if "during 'close'" in str(exc) else 2
            finally:
                os._exit(code)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the driver's close() hid the defect"
    proxy.close()


def test_the_c_kit_builds_warning_free_with_wextra(tmp_path: Path) -> None:
    if CC is None:
        pytest.skip("needs a C compiler (cc)")
    done = subprocess.run(
        [CC, "-O2", "-Wall", "-Wextra", "-Werror", "-c", "-o", str(tmp_path / "kit.o"),
         str(C_DIR / "fdpass_adapter.c")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
