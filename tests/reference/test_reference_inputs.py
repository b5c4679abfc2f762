"""Listener options, invalid input, close() and the errors' names and errnos."""

from __future__ import annotations

import errno
import os
import socket
from typing import Any

import pytest
from forkkit import (
    IDS,
    PROXIES,
    Lab,
    ProxyClass,
    fd_count,
    full_fd_table,
    ipcs_queues,
    queue_id,
    queue_messages,
    read_line,
    wait_for,
)

from reference import ForkSharedProxy, MasterProxy, ReusePortProxy

pytestmark = pytest.mark.timeout(30)


INVALID: list[tuple[Any, Any]] = [
    (-1, "tcp"),
    (65536, "tcp"),
    (2**70, "tcp"),
    ("80", "tcp"),
    (True, "tcp"),
    (1.5, "tcp"),
    (None, "tcp"),
    (0, "udp"),
    (0, None),
    (0, 6),
]


def _invalid_input_body(cls: ProxyClass) -> dict[str, Any]:
    queues_before = sorted(ipcs_queues())
    fds_before = fd_count()
    proxy = cls()
    supported = proxy.is_supported()
    outcomes = []
    leaks = []
    for port, protocol in INVALID:
        case = [repr(port), repr(protocol)]
        try:
            proxy.create_socket(port, protocol)
            outcomes.append([*case, None])
        except Exception as exc:
            # Counted while the exception (and every frame it references) is
            # alive: a socket that was opened and merely dropped is still open.
            if fd_count() != fds_before:
                leaks.append(case)
            name = type(exc).__name__
            if not isinstance(exc, (ValueError, TypeError, OverflowError)):
                name = f"unexpected {name}: {exc}"
            outcomes.append([*case, name])
    return {
        "supported": supported,
        "outcomes": outcomes,
        "leaks": leaks,
        "queues_before": queues_before,
        "queues_after": sorted(ipcs_queues()),
    }


@pytest.mark.parametrize("cls", PROXIES, ids=IDS)
def test_invalid_input_rejected_before_anything_is_acquired(lab: Lab, cls: ProxyClass) -> None:
    """SP-06/SP-07/IPC-01: bad port or protocol raises ValueError/TypeError/OverflowError,
    with fd count and ipcs unchanged (in a fresh IPC namespace, where ipcs lists only ours)."""
    done = lab.run_in_child(lambda note: _invalid_input_body(cls), new_ipc_ns=True)
    assert done.error is None, done.error
    out = done.result
    assert out["supported"] is True
    accepted = [o for o in out["outcomes"] if o[2] is None]
    assert not accepted, f"accepted invalid input: {accepted}"
    wrong = [o for o in out["outcomes"] if o[2] not in ("ValueError", "TypeError", "OverflowError")]
    assert not wrong, f"wrong exception types: {wrong}"
    assert out["leaks"] == [], f"invalid input acquired fds: {out['leaks']}"
    assert out["queues_before"] == [] and out["queues_after"] == [], out


def _port_in_use_body(cls: ProxyClass) -> dict[str, Any]:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    proxy = cls()
    before = fd_count()
    out: dict[str, Any] = {"raised": None}
    try:
        proxy.create_socket(port)
        out["fd_leak"] = fd_count() - before
    except OSError as exc:
        out["fd_leak"] = fd_count() - before  # while the exception's frames are alive
        out.update(raised=type(exc).__name__, errno=exc.errno, message=str(exc))
    out["queues"] = sorted(ipcs_queues())
    proxy.close()
    holder.close()
    return out


@pytest.mark.parametrize("cls", PROXIES, ids=IDS)
def test_port_in_use_raises_eaddrinuse_and_leaks_nothing(lab: Lab, cls: ProxyClass) -> None:
    """SP-08: a port in use -> OSError(EADDRINUSE) naming create_socket; no fd, no queue."""
    done = lab.run_in_child(lambda note: _port_in_use_body(cls), new_ipc_ns=True)
    assert done.error is None, done.error
    out = done.result
    assert out["raised"] is not None, "create_socket bound a port that is in use"
    assert out["errno"] == errno.EADDRINUSE, out
    assert "create_socket" in out["message"], out["message"]
    assert out["fd_leak"] == 0
    assert out["queues"] == []


@pytest.mark.parametrize("cls", PROXIES, ids=IDS)
def test_listener_listening_blocking_noninheritable_with_so_reuseaddr(
    lab: Lab, cls: ProxyClass
) -> None:
    """SP-03/SP-05: listening, blocking, non-inheritable AF_INET stream socket, SO_REUSEADDR."""
    proxy = lab.proxy(cls)
    listener, port = lab.listen(proxy)
    assert listener.family == socket.AF_INET and listener.type == socket.SOCK_STREAM
    assert listener.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) != 0
    assert listener.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
    assert listener.getblocking() is True
    assert os.get_inheritable(listener.fileno()) is False
    assert port != 0
    with socket.create_connection(("127.0.0.1", port), timeout=5.0):
        pass


def test_reuseport_set_and_second_instance_binds_same_port(lab: Lab) -> None:
    """SP-15: SO_REUSEPORT is set; a second instance binds the port while the first is open."""
    first = lab.proxy(ReusePortProxy)
    l1, port = lab.listen(first)
    assert l1.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) != 0
    second = lab.proxy(ReusePortProxy)
    l2, port2 = lab.listen(second, port)
    assert port2 == port
    assert l2.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) != 0
    assert l1.fileno() >= 0 and l1.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1


def test_forkshared_does_not_set_so_reuseport(lab: Lab) -> None:
    """ForkShared leaves SO_REUSEPORT off: a second instance on its port gets EADDRINUSE."""
    first = lab.proxy(ForkSharedProxy)
    l1, port = lab.listen(first)
    assert l1.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 0
    second = lab.proxy(ForkSharedProxy)
    with pytest.raises(OSError) as info:
        lab.listen(second, port)
    assert info.value.errno == errno.EADDRINUSE


@pytest.mark.private_ipc
@pytest.mark.parametrize("cls", PROXIES, ids=IDS)
def test_close_idempotent_and_port_bindable_again(lab: Lab, cls: ProxyClass) -> None:
    """SP-12: close() twice is harmless; the port can be bound again (for MasterProxy at once,
    its workers hold no listener; for shared listeners once the workers have exited)."""
    proxy = lab.proxy(cls)
    listener, port = lab.listen(proxy)
    qid = queue_id(proxy)
    if isinstance(proxy, MasterProxy):
        proxy.open_channels(2)
    pool = lab.workers(proxy, listener, 2)
    for _ in range(2):
        if isinstance(proxy, MasterProxy):
            lab.ask_via(proxy, listener, port)
        else:
            lab.ask(port)
    holds = []
    if isinstance(proxy, MasterProxy):
        # Keep both workers alive (busy) across the master's close(): once both
        # are idle (two tokens queued), two held connections go one to each.
        assert qid is not None
        assert wait_for(lambda: queue_messages(qid) == 2, 3.0)
        busy = set()
        for _ in range(2):
            holds.append(lab.connect(port, b"hold"))
            busy.add(proxy.dispatch(listener, timeout=5.0))
            assert int(read_line(holds[-1])) in pool.pids
        assert busy == {0, 1}
    proxy.close()
    proxy.close()
    assert listener.fileno() == -1, "close() left the listener open"
    if isinstance(proxy, MasterProxy):
        assert qid is not None and qid not in ipcs_queues()
        assert not pool.wait_all(timeout=0.0), "a worker exited while holding a connection"
        _bind_again(port)  # both workers still running: neither may hold the listener
        for conn in holds:
            conn.close()
        exited = pool.wait_all(timeout=2.0)
        assert len(exited) == 2
        assert all(os.WIFEXITED(s) and os.WEXITSTATUS(s) == 0 for s in exited.values())
    else:
        pool.stop()
    _bind_again(port)
    again = lab.proxy(cls)
    _, port2 = lab.listen(again, port)
    assert port2 == port
    again.close()
    again.close()


def _bind_again(port: int) -> None:
    sock = socket.socket()
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen()
    finally:
        sock.close()


# -- errors name the step and keep errno ------------------------------------------


def test_error_dispatch_before_open_channels_names_dispatch(lab: Lab) -> None:
    proxy = lab.proxy(MasterProxy)
    listener, _ = lab.listen(proxy)
    with pytest.raises(OSError) as info:
        proxy.dispatch(listener, timeout=0.1)
    assert info.value.errno is not None
    assert "dispatch" in str(info.value)


def test_error_accept_before_enter_worker_names_accept(lab: Lab) -> None:
    proxy = lab.proxy(MasterProxy)
    listener, _ = lab.listen(proxy)
    proxy.open_channels(1)
    with pytest.raises(OSError) as info:
        proxy.accept(listener)
    assert info.value.errno is not None
    assert "accept" in str(info.value)


def test_error_open_channels_before_create_socket_names_open_channels(lab: Lab) -> None:
    proxy = lab.proxy(MasterProxy)
    with pytest.raises(OSError) as info:
        proxy.open_channels(2)
    assert info.value.errno is not None
    assert "open_channels" in str(info.value)


def test_error_dispatch_on_closed_listener_names_dispatch_ebadf(lab: Lab) -> None:
    """SP-14: a closed listener makes dispatch raise OSError(EBADF) at once, not hang."""
    proxy = lab.proxy(MasterProxy)
    listener, _ = lab.listen(proxy)
    proxy.open_channels(1)
    listener.close()
    with pytest.raises(OSError) as info:
        proxy.dispatch(listener, timeout=1.0)
    assert info.value.errno == errno.EBADF
    assert "dispatch" in str(info.value)


def _create_socket_emfile_body(cls: ProxyClass) -> dict[str, Any]:
    proxy = cls()
    out: dict[str, Any] = {"raised": None}
    with full_fd_table(free=0):
        try:
            proxy.create_socket(0)
        except OSError as exc:
            out.update(raised=type(exc).__name__, errno=exc.errno, message=str(exc))
    return out


@pytest.mark.parametrize("cls", PROXIES, ids=IDS)
def test_error_create_socket_emfile_keeps_errno_and_names_create_socket(
    lab: Lab, cls: ProxyClass
) -> None:
    """No fd left for the listener's socket(): OSError(EMFILE) whose message names create_socket."""
    done = lab.run_in_child(lambda note: _create_socket_emfile_body(cls), new_ipc_ns=True)
    assert done.error is None, done.error
    out = done.result
    assert out["raised"] is not None
    assert out["errno"] == errno.EMFILE, out
    assert "create_socket" in out["message"], (
        f"the error does not name the step: {out['message']!r}"
    )
