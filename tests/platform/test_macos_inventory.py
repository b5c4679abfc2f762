"""macOS evidence paths: fd tables through psutil, System V objects through BSD ``ipcs``.

This Linux machine cannot run macOS. Each test patches ``sys.platform`` to
"darwin" (and, for ``ipcs``, puts a recorded macOS ``ipcs`` on PATH) and says
so; the code under test then runs for real: psutil reads real processes, the
leak snapshot diffs, cleanup calls ``ipcrm``.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import sys
from pathlib import Path

import pytest

from fdpass_conformance.fixtures.core import ForkWorkers
from fdpass_conformance.fixtures.server import ProxyServerFactory
from fdpass_conformance.leaks import fds as fdmod
from fdpass_conformance.leaks.fds import fd_count, fd_inventory
from fdpass_conformance.leaks.ipcs import IpcObject, ipcs_command, list_ipc_objects, parse_ipcs
from fdpass_conformance.leaks.snapshot import LeakError, assert_no_leaks, take_snapshot
from reference import MasterProxy

SAMPLES = Path(__file__).resolve().parents[1] / "data" / "ipcs"

pytestmark = pytest.mark.timeout(60)


def test_another_process_through_psutil(
    monkeypatch: pytest.MonkeyPatch, fdpass_forked_workers: ForkWorkers, tmp_path: Path
) -> None:
    """MOCK of macOS: sys.platform is "darwin", so fd_inventory takes the psutil path.

    The process inspected is a real forked child holding a listener, a
    connected TCP socket, a Unix socket pair and a file; psutil reads them.
    Close-on-exec of another process's fds is unknown there: None.
    """
    ready_r, ready_w = os.pipe()
    release_r, release_w = os.pipe()
    data_file = tmp_path / "held.txt"
    data_file.write_text("x")

    def child(_index: int) -> None:
        os.close(ready_r)
        os.close(release_w)
        listener = socket.create_server(("127.0.0.1", 0))
        client = socket.create_connection(listener.getsockname())
        served, _ = listener.accept()
        a, b = socket.socketpair()
        held = open(data_file, encoding="ascii")  # noqa: SIM115 - held open on purpose
        fds = {
            "listen": listener.fileno(),
            "port": listener.getsockname()[1],
            "tcp": client.fileno(),
            "unix": a.fileno(),
            "file": held.fileno(),
        }
        os.write(ready_w, json.dumps(fds).encode())
        os.read(release_r, 1)  # until the parent has looked
        for sock in (listener, client, served, a, b):
            sock.close()
        held.close()

    group = fdpass_forked_workers(1, child, deadline=30.0)
    os.close(ready_w)
    os.close(release_r)
    try:
        held = json.loads(os.read(ready_r, 4096))
        pid = group.pids[0]
        linux_view = {info.fd: info for info in fd_inventory(pid)}
        monkeypatch.setattr(sys, "platform", "darwin")
        inventory = {info.fd: info for info in fd_inventory(pid)}
        count = fd_count(pid)
    finally:
        os.write(release_w, b"x")
        os.close(release_w)
        os.close(ready_r)
    group.results()
    monkeypatch.undo()

    port = held["port"]
    assert inventory[held["listen"]].kind == "tcp-listen"
    assert inventory[held["listen"]].detail == f"127.0.0.1:{port}"
    assert inventory[held["tcp"]].kind == "tcp"
    assert inventory[held["tcp"]].detail.endswith(f"-> 127.0.0.1:{port}")
    assert inventory[held["unix"]].kind == "unix"
    assert inventory[held["file"]].kind == "file"
    assert inventory[held["file"]].target == str(data_file)
    assert all(info.cloexec is None for info in inventory.values())
    assert count == len(linux_view)  # psutil's num_fds: every fd, pipes included
    # What psutil sees of sockets and files agrees with /proc, fd for fd.
    for fd, info in inventory.items():
        assert linux_view[fd].kind == info.kind, (fd, linux_view[fd], info)


def test_server_master_through_psutil(
    monkeypatch: pytest.MonkeyPatch, fdpass_proxy_server: ProxyServerFactory
) -> None:
    """MOCK of macOS: the master of a real server under test, inventoried the macOS way.

    The listener and the channel ends that the FP requirements reason about
    are found with the same fd numbers and kinds as through /proc.
    """
    srv = fdpass_proxy_server(MasterProxy, workers=2)
    assert srv.request_reply().answered
    linux_view = {info.fd: info.kind for info in srv.fds("master")}
    monkeypatch.setattr(sys, "platform", "darwin")
    mac_view = {info.fd: info.kind for info in srv.fds("master")}
    monkeypatch.undo()
    listeners = [fd for fd, kind in mac_view.items() if kind == "tcp-listen"]
    assert len(listeners) == 1
    sockets = {fd: kind for fd, kind in linux_view.items() if kind in ("tcp-listen", "tcp", "unix")}
    assert {fd: kind for fd, kind in mac_view.items() if fd in sockets} == sockets
    assert set(sockets) <= set(mac_view)


def _fake_ipc_tools(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sample: str) -> Path:
    """A recorded macOS ``ipcs`` and a recording ``ipcrm`` first on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    log = tmp_path / "calls.log"
    current = tmp_path / "current.txt"
    current.write_text((SAMPLES / sample).read_text(encoding="utf-8"), encoding="utf-8")
    for tool, action in (("ipcs", f'cat "{current}"'), ("ipcrm", "true")):
        script = bin_dir / tool
        script.write_text(f'#!/bin/sh\necho "{tool} $*" >> "{log}"\n{action}\n', encoding="ascii")
        script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return current


def _darwin(monkeypatch: pytest.MonkeyPatch) -> None:
    """MOCK: sys.platform reads "darwin", also where it was bound at import (ipcs_command's
    default argument)."""
    monkeypatch.setattr(sys, "platform", "darwin")
    monkeypatch.setattr(ipcs_command, "__defaults__", ("darwin",))


def test_ipcs_on_macos_runs_the_bsd_tool_and_parses_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """MOCK of macOS: sys.platform is "darwin" and ``ipcs`` replays a recorded macOS listing."""
    _fake_ipc_tools(tmp_path, monkeypatch, "macos-objects.txt")
    _darwin(monkeypatch)
    objects = list_ipc_objects()
    assert objects == parse_ipcs((SAMPLES / "macos-objects.txt").read_text(), "bsd")
    assert (tmp_path / "calls.log").read_text().splitlines() == ["ipcs -q -m -s"]


def test_leak_check_on_macos_finds_removes_and_names_a_queue(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """MOCK of macOS: the listing goes from the recorded empty one to the recorded objects;
    the snapshot diff names every new object, and cleanup calls ``ipcrm`` with BSD flags.
    """
    current = _fake_ipc_tools(tmp_path, monkeypatch, "macos-empty.txt")
    _darwin(monkeypatch)
    before = take_snapshot([], ipc_lister=list_ipc_objects)
    current.write_text((SAMPLES / "macos-objects.txt").read_text(encoding="utf-8"))
    after = take_snapshot([], ipc_lister=list_ipc_objects)
    with pytest.raises(LeakError) as info:
        assert_no_leaks(before, after, context="mock-darwin")
    leaked = [leak.ipc for leak in info.value.leaks]
    assert IpcObject("queue", 131074, 0x410FE254, 0o666, "_www") in leaked
    assert len(leaked) == 7
    calls = (tmp_path / "calls.log").read_text().splitlines()
    assert "ipcrm -q 131074" in calls and "ipcrm -m 65537" in calls and "ipcrm -s 196609" in calls
    assert str(info.value).startswith("7 leaks [mock-darwin]:")


def test_psutil_path_reports_a_vanished_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """MOCK of macOS: a pid that no longer exists is ProcessLookupError on the psutil path too."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        os._exit(0)
    os.waitpid(pid, 0)
    monkeypatch.setattr(sys, "platform", "darwin")
    with pytest.raises(ProcessLookupError):
        fd_inventory(pid)
    with pytest.raises(ProcessLookupError):
        fd_count(pid)
    assert fdmod._psutil_addr(("127.0.0.1", 80)) == "127.0.0.1:80"
