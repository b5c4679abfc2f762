"""Forking with deadlines: run a function in a child, wait for a pid, never hang.

Why a module of its own: every fault test and the namespace probe fork a
short-lived child and must get it back (or kill it) within a deadline,
whatever the child does. ``os.waitpid`` has no timeout, so waiting is a
``WNOHANG`` poll with a short back-off; a child past its deadline gets
``SIGKILL`` and is reaped, so no zombie and no stray process survives a test.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import time
from collections.abc import Callable
from typing import NamedTuple

from ..harness.childproc import quiet_fork

#: Largest amount of output read back from a child; enough for a report line.
MAX_OUTPUT = 1 << 20


class ChildResult(NamedTuple):
    """How a child ended: ``status`` is its exit code, or ``-SIGNUM`` if a signal killed it."""

    status: int
    output: bytes


def _decode_status(waitstatus: int) -> int:
    """Exit code, or minus the signal number, as ``subprocess`` reports it."""
    if os.WIFSIGNALED(waitstatus):
        return -os.WTERMSIG(waitstatus)
    if os.WIFEXITED(waitstatus):
        return os.WEXITSTATUS(waitstatus)
    return -1  # pragma: no cover - stopped children are not reported without WUNTRACED


def try_reap(pid: int) -> int | None:
    """Reap ``pid`` if it has ended; return its decoded status, else None."""
    try:
        done, waitstatus = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return None
    if done == 0:
        return None
    return _decode_status(waitstatus)


def wait_pid(pid: int, timeout: float, *, kill: bool = True) -> int:
    """Wait at most ``timeout`` seconds for child ``pid`` and return its decoded status.

    Past the deadline the child is killed (``SIGKILL``) and reaped when ``kill``
    is true, then TimeoutError is raised; with ``kill=False`` it is left running
    and TimeoutError is raised. A pid that is not our child raises
    ChildProcessError at once.
    """
    deadline = time.monotonic() + timeout
    delay = 0.0005
    while True:
        done, waitstatus = os.waitpid(pid, os.WNOHANG)
        if done:
            return _decode_status(waitstatus)
        if time.monotonic() >= deadline:
            break
        time.sleep(delay)
        delay = min(delay * 2, 0.02)
    if kill:
        kill_and_reap(pid)
        raise TimeoutError(f"child {pid} did not exit within {timeout:g}s; killed it")
    raise TimeoutError(f"child {pid} did not exit within {timeout:g}s")


def kill_and_reap(pid: int, timeout: float = 5.0) -> int | None:
    """SIGKILL child ``pid`` and reap it; return its status (None if it could not be reaped).

    A process in uninterruptible sleep can outlive SIGKILL for a while; after
    ``timeout`` we stop waiting rather than hang (the zombie is reaped later by
    whoever waits for it, or by init once we exit).
    """
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while True:
        try:
            done, waitstatus = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return None
        if done:
            return _decode_status(waitstatus)
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.005)


def read_until_eof(fd: int, deadline: float, limit: int = MAX_OUTPUT) -> bytes:
    """Read ``fd`` until EOF or the monotonic ``deadline``; raise TimeoutError at the deadline."""
    chunks: list[bytes] = []
    size = 0
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no EOF from the child before the deadline")
        ready, _, _ = select.select([fd], [], [], remaining)
        if not ready:
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            return b"".join(chunks)
        if size < limit:
            chunks.append(chunk[: limit - size])
            size += len(chunk)


def call_in_child(fn: Callable[[], bytes | None], timeout: float = 10.0) -> ChildResult:
    """Run ``fn`` in a forked child and return how it ended and what it returned.

    The child exits with 0 after writing ``fn()``'s bytes to a pipe, or with 1
    after writing ``"ExceptionName: message"`` if ``fn`` raised; it never runs
    the parent's cleanup (``os._exit``). Past ``timeout`` seconds the child is
    killed and reaped and TimeoutError is raised. Why a pipe and not the exit
    code: an errno or a short report survives intact, and EOF tells us the
    child is done even when it left grandchildren behind.
    """
    rfd, wfd = os.pipe()
    pid = quiet_fork()
    if pid == 0:  # pragma: no cover - runs in the child, which never returns here
        code = 0
        try:
            os.close(rfd)
            try:
                out = fn() or b""
            except BaseException as exc:
                out = f"{type(exc).__name__}: {exc}".encode(errors="replace")
                code = 1
            view = memoryview(out)
            while view:
                view = view[os.write(wfd, view) :]
        finally:
            os._exit(code)
    os.close(wfd)
    deadline = time.monotonic() + timeout
    try:
        output = read_until_eof(rfd, deadline)
    except BaseException as exc:
        kill_and_reap(pid)
        if isinstance(exc, TimeoutError):
            raise TimeoutError(
                f"child {pid} did not finish within {timeout:g}s; killed it"
            ) from None
        raise
    finally:
        os.close(rfd)
    status = wait_pid(pid, max(deadline - time.monotonic(), 0.5))
    return ChildResult(status, output)
