"""fd inventories of this process and of another one, on real sockets and pipes."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator

import pytest

from fdpass_conformance.leaks import FD_KINDS, FdInfo, fd_count, fd_inventory, fds, summarize

from .helpers import Children, free_pid, needs_linux, read_line

pytestmark = needs_linux


def by_fd(pid: int) -> dict[int, FdInfo]:
    return {info.fd: info for info in fd_inventory(pid)}


@pytest.fixture
def sockets() -> Iterator[list[socket.socket]]:
    """Sockets a test opens; closed at teardown whatever happens."""
    opened: list[socket.socket] = []
    try:
        yield opened
    finally:
        for sock in opened:
            sock.close()


def test_socketpair_is_unix_and_cloexec(sockets: list[socket.socket]) -> None:
    a, b = socket.socketpair()
    sockets += [a, b]
    inv = by_fd(os.getpid())
    for sock in (a, b):
        info = inv[sock.fileno()]
        assert (info.kind, info.cloexec) == ("unix", True)
        assert info.target.startswith("socket:[")


def test_listening_and_connected_tcp(sockets: list[socket.socket]) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    sockets.append(listener)
    port = listener.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port), timeout=5)
    sockets.append(client)
    served, _ = listener.accept()
    sockets.append(served)
    inv = by_fd(os.getpid())
    assert inv[listener.fileno()].kind == "tcp-listen"
    assert inv[listener.fileno()].detail == f"127.0.0.1:{port}"
    client_port = client.getsockname()[1]
    assert inv[client.fileno()].kind == "tcp"
    assert inv[client.fileno()].detail == f"127.0.0.1:{client_port} -> 127.0.0.1:{port}"
    assert inv[served.fileno()].kind == "tcp"
    assert inv[served.fileno()].detail == f"127.0.0.1:{port} -> 127.0.0.1:{client_port}"


def test_ipv6_listener_is_tcp_listen(sockets: list[socket.socket]) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        listener = socket.create_server(("::1", 0), family=socket.AF_INET6)
    except OSError:
        pytest.skip("no IPv6 loopback")
    sockets.append(listener)
    info = by_fd(os.getpid())[listener.fileno()]
    assert (info.kind, info.detail) == ("tcp-listen", f"[::1]:{listener.getsockname()[1]}")


def test_pipe_and_inheritable_flag() -> None:
    r, w = os.pipe()
    try:
        os.set_inheritable(w, True)
        inv = by_fd(os.getpid())
        assert (inv[r].kind, inv[r].cloexec) == ("pipe", True)
        assert (inv[w].kind, inv[w].cloexec) == ("pipe", False)
        assert inv[r].target == inv[w].target  # both ends of one pipe
    finally:
        os.close(r)
        os.close(w)


def test_inheritable_socket_is_reported_without_cloexec(sockets: list[socket.socket]) -> None:
    a, b = socket.socketpair()
    sockets += [a, b]
    a.set_inheritable(True)
    inv = by_fd(os.getpid())
    assert inv[a.fileno()].cloexec is False
    assert inv[b.fileno()].cloexec is True
    assert "cloexec=no" in inv[a.fileno()].describe(os.getpid())


def test_regular_file_and_other(tmp_path: os.PathLike[str]) -> None:
    path = os.path.join(os.fspath(tmp_path), "f.txt")
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC)
    efd = os.eventfd(0) if hasattr(os, "eventfd") else None
    try:
        inv = by_fd(os.getpid())
        assert (inv[fd].kind, inv[fd].target) == ("file", path)
        if efd is not None:
            assert inv[efd].kind == "other"
    finally:
        os.close(fd)
        if efd is not None:
            os.close(efd)


def test_inventory_of_another_process(children: Children) -> None:
    # The child opens one object of each kind, marks one inheritable, and
    # reports the numbers; then it waits on stdin until the test is done.
    proc = children.python(
        "import json, os, socket, sys\n"
        "a, b = socket.socketpair()\n"
        "l = socket.create_server(('127.0.0.1', 0))\n"
        "r, w = os.pipe()\n"
        "os.set_inheritable(w, True)\n"
        "print(json.dumps([a.fileno(), l.fileno(), r, w]), flush=True)\n"
        "sys.stdin.read()\n"
    )
    unix_fd, listen_fd, r, w = json.loads(read_line(proc))
    inv = by_fd(proc.pid)
    assert (inv[unix_fd].kind, inv[unix_fd].cloexec) == ("unix", True)
    assert inv[listen_fd].kind == "tcp-listen"
    assert (inv[r].kind, inv[r].cloexec) == ("pipe", True)
    assert (inv[w].kind, inv[w].cloexec) == ("pipe", False)
    assert fd_count(proc.pid) == len(inv)
    counts = summarize(inv.values())
    assert counts["unix"] >= 2
    assert counts["tcp-listen"] == 1
    assert counts["pipe"] >= 2


def test_count_matches_inventory_and_follows_open_and_close() -> None:
    me = os.getpid()
    start = fd_count(me)
    assert start == len(fd_inventory(me))
    r, w = os.pipe()
    try:
        assert fd_count(me) == start + 2
    finally:
        os.close(r)
        os.close(w)
    assert fd_count(me) == start


def test_summarize_counts_every_kind() -> None:
    inv = [
        FdInfo(3, "unix", True, "socket:[1]"),
        FdInfo(4, "unix", False, "socket:[2]"),
        FdInfo(5, "pipe", True, "pipe:[3]"),
    ]
    assert summarize(inv) == {
        "tcp-listen": 0,
        "tcp": 0,
        "unix": 2,
        "pipe": 1,
        "file": 0,
        "other": 0,
    }
    assert tuple(summarize([])) == FD_KINDS


def test_missing_process_raises(children: Children) -> None:
    pid = children.fork_exiting()
    os.waitpid(pid, 0)
    with pytest.raises(ProcessLookupError):
        fd_inventory(pid)
    with pytest.raises(ProcessLookupError):
        fd_count(pid)


def test_portable_fallback_classifies_own_fds(sockets: list[socket.socket]) -> None:
    # The psutil path is what macOS uses; psutil works on Linux too, so the
    # path runs here on real fds (only the platform dispatch is bypassed).
    a, b = socket.socketpair()
    listener = socket.create_server(("127.0.0.1", 0))
    sockets += [a, b, listener]
    a.set_inheritable(True)
    r, w = os.pipe()
    try:
        inv = {info.fd: info for info in fds._psutil_inventory(os.getpid())}
        assert (inv[a.fileno()].kind, inv[a.fileno()].cloexec) == ("unix", False)
        assert (inv[b.fileno()].kind, inv[b.fileno()].cloexec) == ("unix", True)
        port = listener.getsockname()[1]
        assert inv[listener.fileno()].kind == "tcp-listen"
        assert inv[listener.fileno()].detail == f"127.0.0.1:{port}"
        assert (inv[r].kind, inv[r].cloexec) == ("pipe", True)
    finally:
        os.close(r)
        os.close(w)
    with pytest.raises(ProcessLookupError):
        fds._psutil_inventory(free_pid())
