"""Choosing a fault layer for a server under test, and naming it in the report.

Syscall-level injection (strace attached to the real process) works for any
language, so it is preferred; the Python-level patch inside the master is the
fallback where strace or ptrace is unavailable (macOS, restricted ptrace).
The layer used is recorded in the test's user_properties for the report.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from ..faults import syscall
from ..faults.errors import parse_errno
from ..harness.server import HarnessError, ProxyServer
from ..outcomes import not_applicable

#: Python entry points for each system call, used by the Python-level layer.
PY_TARGETS = {
    "bind": "socket.socket.bind",
    "listen": "socket.socket.listen",
    "socketpair": "socket.socketpair",
    "sendmsg": "socket.socket.sendmsg",
    "recvmsg": "socket.socket.recvmsg",
    "accept": "socket.socket._accept",
    "accept4": "socket.socket._accept",
    "msgget": "fdpass_conformance.sysv.msgget",
}


@dataclass
class Injection:
    """A fault of :func:`counted_fault`: its layer and, once left, how many calls it failed."""

    layer: str
    injected: int = 0


@contextlib.contextmanager
def counted_fault(
    server: ProxyServer,
    request: pytest.FixtureRequest,
    call: str,
    error: str,
    *,
    after: int = 0,
    times: int | None = 1,
) -> Iterator[Injection]:
    """Fail the master's calls ``after+1..after+times`` of ``call``; count what really failed.

    strace on the master where it can attach, else a Python-level patch in the
    master. After the block, ``injected`` tells whether the implementation
    reached those calls at all, which is how a sweep knows it is done and a
    test knows it is n/a.
    """
    code = parse_errno(error)
    ok, why = syscall.available()
    pid = server.master_pid
    assert pid is not None
    if ok:
        request.node.user_properties.append(("fdpass_fault_layer", f"syscall:{call}:{error}"))
        result = Injection("syscall")
        fault = syscall.SyscallFault(
            pid, syscall=call, error=code, after=after, times=times, follow_forks=False
        )
        try:
            with fault:
                yield result
        finally:
            result.injected = fault.injected_count()
        return
    if server.exec_impl:  # the python layer would patch the harness, not the program
        not_applicable(f"for an exec: implementation: no python fault layer ({why})")
    target = PY_TARGETS.get(call)
    if target is None:
        pytest.skip(f"cannot inject {call} failures here: {why}")
    request.node.user_properties.append(("fdpass_fault_layer", f"python:{target}:{error}"))
    result = Injection("python")
    server.request("patch", target, code, after, times)
    try:
        yield result
    finally:
        with contextlib.suppress(HarnessError):
            result.injected = sum(server.request("unpatch"))
