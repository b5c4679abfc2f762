"""``processes.fork_workers`` (``fdpass_forked_workers``) on the paths an ordinary child avoids.

Real children throughout: ones that exit without a result, die by a signal
Python has no name for, destroy their result pipe, send a result that cannot
be unpickled, are reaped by someone else, or call the group they inherited.
Two tests mock what cannot be provoked safely (a failing ``fork`` and a
platform without ``waitid``/``poll``) and say so.
"""

from __future__ import annotations

import errno
import fcntl
import os
import select
import signal
import stat
import sys
import time
from collections.abc import Callable
from typing import Any, NoReturn

import psutil
import pytest

from fdpass_conformance.processes import (
    CRASHED,
    ChildFailed,
    ChildResult,
    WorkerGroup,
    children,
    fork_workers,
)

pytestmark = pytest.mark.timeout(60)


def _fd_count() -> int:
    return len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else 0


def _no_children_left() -> bool:
    return [c for c in psutil.Process().children() if c.status() != psutil.STATUS_ZOMBIE] == []


def _run(n: int, target: Callable[[int], object], **kwargs: Any) -> list[ChildResult]:
    with fork_workers(n, target, deadline=20) as group:
        return group.results(**kwargs)


def test_describe_names_each_ending() -> None:
    def target(i: int) -> object:
        if i == 0:
            return 42
        if i == 1:
            os._exit(3)
        os.kill(os.getpid(), signal.SIGRTMIN + 6)  # no name in signal.Signals
        raise AssertionError("not reached")

    with fork_workers(3, target, deadline=20) as group:
        assert len(group) == 3
        returned, exited, killed = group.results()
        pids = group.pids
    assert returned.ok and returned.get() == 42
    assert returned.describe() == f"forked child 0 (pid {pids[0]}) returned 42"
    assert (exited.outcome, exited.returncode) == ("died", 3)
    assert exited.describe() == (
        f"forked child 1 (pid {pids[1]}) died without a result: exit status 3"
    )
    sig = int(signal.SIGRTMIN) + 6
    assert killed.returncode == -sig
    assert killed.describe().endswith(f"died without a result: killed by signal {sig}")
    with pytest.raises(ChildFailed) as info:
        killed.get()
    assert info.value.result is killed


def _close_or_replace_result_pipe(how: str) -> Callable[[int], object]:
    """A target that closes (or dup2s /dev/null over) every pipe write end it holds."""

    def target(i: int) -> object:
        devnull = os.open(os.devnull, os.O_WRONLY)
        for name in os.listdir("/proc/self/fd"):
            fd = int(name)
            if fd <= 2 or fd == devnull:
                continue
            try:
                is_pipe = stat.S_ISFIFO(os.fstat(fd).st_mode)
                write_end = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_WRONLY
            except OSError:
                continue
            if is_pipe and write_end:
                if how == "close":
                    os.close(fd)
                else:
                    os.dup2(devnull, fd)
        return "sent into the void"

    return target


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/fd")
@pytest.mark.parametrize("how", ["close", "replace"])
def test_a_target_that_destroys_its_result_pipe_is_reported_not_believed(
    how: str, capfd: pytest.CaptureFixture[str]
) -> None:
    (result,) = _run(1, _close_or_replace_result_pipe(how))
    assert (result.outcome, result.returncode) == ("died", CRASHED)
    err = capfd.readouterr().err
    assert (
        f"forked child 0 (pid {result.pid}): the target closed or replaced the result pipe" in err
    )


class _Unloadable:
    """Pickles fine in the child; unpickling it in the parent raises."""

    def __reduce__(self) -> tuple[Callable[[], NoReturn], tuple[()]]:
        return (_refuse, ())


def _refuse() -> NoReturn:
    raise ValueError("refused to load")


def test_a_result_that_cannot_be_unpickled_is_an_error_not_a_crash() -> None:
    (result,) = _run(1, lambda i: _Unloadable())
    assert result.outcome == "raised"
    assert result.returncode == 0  # the child itself did fine
    assert result.error is not None
    assert (result.error.type, result.error.message) == (
        "ValueError",
        "cannot unpickle the child's result: refused to load",
    )


def test_a_child_reaped_by_someone_else_still_gives_its_result() -> None:
    """waitpid elsewhere (a SIGCHLD handler, waitpid(-1)) took the status; the result, already
    in the pipe, is read without waiting for EOF, and the status is reported as unknown."""
    with fork_workers(2, lambda i: "value" if i == 0 else os._exit(0), deadline=20) as group:
        for pid in group.pids:
            os.waitpid(pid, 0)
        value, silent = group.results()
    assert (value.outcome, value.value, value.returncode) == ("returned", "value", None)
    assert (silent.outcome, silent.returncode) == ("died", None)
    assert silent.describe().endswith(
        "died without a result: its exit status was collected elsewhere"
    )


def test_a_child_cannot_wait_for_or_close_the_group_it_inherited() -> None:
    outer: list[WorkerGroup] = []

    def inner(i: int) -> object:
        group = outer[0]
        group.close()  # harmless here: only the owner reaps
        try:
            group.results(timeout=1)
        except RuntimeError as exc:
            return str(exc)
        return "waited"

    def target(i: int) -> object:
        return "sleeper" if i == 0 else None

    with fork_workers(1, target, deadline=20) as group:
        outer.append(group)
        (answer,) = _run(1, inner)
        assert answer.get() == "WorkerGroup.results() called outside the process that forked it"
        (sleeper,) = group.results()
        assert sleeper.get() == "sleeper"


def test_negative_count_is_refused() -> None:
    with pytest.raises(ValueError, match="n must be >= 0, got -1"):
        fork_workers(-1, lambda i: None)


def test_a_fork_failing_midway_kills_and_reaps_the_children_already_forked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """MOCK: the second ``os.fork`` raises EAGAIN (a process limit reached); exhausting the
    real limit would hurt every other process of this user."""
    real_fork = os.fork
    calls = []

    def fork() -> int:
        calls.append(1)
        if len(calls) == 2:
            raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")
        return real_fork()

    before = _fd_count()
    monkeypatch.setattr(os, "fork", fork)
    with pytest.raises(BlockingIOError):
        fork_workers(3, lambda i: time.sleep(30), deadline=20)
    monkeypatch.undo()
    assert len(calls) == 2
    assert _no_children_left()
    assert _fd_count() == before  # both ends of the failed child's pipe, and the first's, closed


def test_without_waitid_and_poll_the_group_still_collects(monkeypatch: pytest.MonkeyPatch) -> None:
    """MOCK: ``waitid`` and ``select.poll`` reported missing, as on platforms without them
    (macOS has no waitid): the fallbacks (waitpid WNOHANG, select) are used."""
    monkeypatch.setattr(children, "_HAS_WAITID", False)
    monkeypatch.delattr(select, "poll")
    results = _run(3, lambda i: i * 10)
    assert [r.get() for r in results] == [0, 10, 20]
    assert _no_children_left()


def test_a_broken_stdout_does_not_stop_forking(monkeypatch: pytest.MonkeyPatch) -> None:
    """A closed sys.stdout cannot be flushed before fork; the children run anyway."""
    closed = open(os.devnull, "w")  # noqa: SIM115
    closed.close()
    monkeypatch.setattr(sys, "stdout", closed)
    results = _run(1, lambda i: "ran")
    assert results[0].get() == "ran"


def test_one_wording_for_every_ending() -> None:
    """Raw wait statuses and decoded exit codes read the same in every report."""
    from fdpass_conformance.processes import describe_exit, describe_status, exit_code

    assert exit_code(3 << 8) == 3
    assert exit_code(signal.SIGPIPE) == -signal.SIGPIPE
    assert describe_status(3 << 8) == describe_exit(3) == "exit status 3"
    assert describe_status(signal.SIGKILL) == describe_exit(-9) == "killed by SIGKILL"
    rt = int(signal.SIGRTMIN) + 5
    assert describe_status(rt) == f"killed by signal {rt}"
    assert describe_exit(None) == "its exit status was collected elsewhere"


def test_wait_status_gives_the_raw_status_and_never_blocks_past_its_deadline() -> None:
    from fdpass_conformance.processes import fork_child, wait_status

    pid = fork_child(lambda: 5)
    status = wait_status(pid, 10)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 5

    def sleep() -> int:
        time.sleep(60)
        return 0

    sleeper = fork_child(sleep)
    start = time.monotonic()
    with pytest.raises(TimeoutError, match="killed it"):
        wait_status(sleeper, 0.2)
    assert time.monotonic() - start < 5
    with pytest.raises(ChildProcessError):  # killed and reaped: nothing left
        os.waitpid(sleeper, os.WNOHANG)
