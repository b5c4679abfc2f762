"""Child discovery and kill_tree on real forked processes."""

from __future__ import annotations

import os
import time

import psutil  # type: ignore[import-untyped, unused-ignore]
import pytest

from fdpass_conformance.leaks import child_pids, child_processes
from fdpass_conformance.processes import kill_tree

from .helpers import Children, free_pid, needs_linux, read_line, wait_until

# A child that starts a grandchild (which keeps no pipe of ours), prints
# its pid and waits until stdin closes.
WITH_GRANDCHILD = (
    "import subprocess, sys\n"
    "g = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'],\n"
    "                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)\n"
    "print(g.pid, flush=True)\n"
    "sys.stdin.read()\n"
)


def gone(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


def test_forked_child_is_seen(children: Children) -> None:
    pid = children.fork_sleeper()
    assert pid in child_pids(os.getpid())
    (info,) = [p for p in child_processes(os.getpid()) if p.pid == pid]
    assert info.ppid == os.getpid()
    assert info.describe().startswith(f"process {pid} (")


def test_recursive_sees_grandchildren(children: Children) -> None:
    proc = children.python(WITH_GRANDCHILD)
    grandchild = int(read_line(proc))
    direct = child_pids(os.getpid(), recursive=False)
    assert proc.pid in direct
    assert grandchild not in direct
    assert {proc.pid, grandchild} <= set(child_pids(os.getpid(), recursive=True))
    # make sure the grandchild does not outlive the test
    assert kill_tree([proc.pid], deadline=5.0) == []


def test_zombies_are_optional(children: Children) -> None:
    pid = children.fork_exiting()
    assert wait_until(lambda: gone(pid))
    assert pid in child_pids(os.getpid(), include_zombies=True)
    assert pid not in child_pids(os.getpid(), include_zombies=False)


def test_missing_process_raises(children: Children) -> None:
    pid = children.fork_exiting()
    os.waitpid(pid, 0)
    with pytest.raises(ProcessLookupError):
        child_pids(pid)


def test_kill_tree_kills_and_reaps_the_whole_tree(children: Children) -> None:
    proc = children.python(WITH_GRANDCHILD)
    grandchild = int(read_line(proc))
    started = time.monotonic()
    assert kill_tree([proc.pid], deadline=5.0) == []
    assert time.monotonic() - started < 5.0
    # the child was ours: kill_tree reaped it, so no zombie is left
    with pytest.raises(ChildProcessError):
        os.waitpid(proc.pid, os.WNOHANG)
    # the grandchild was reparented and reaped by its new parent
    assert wait_until(lambda: gone(grandchild))
    assert proc.pid not in child_pids(os.getpid())


def test_kill_tree_reaps_a_bare_fork(children: Children) -> None:
    pid = children.fork_sleeper()
    assert kill_tree([pid], deadline=5.0) == []
    assert pid not in child_pids(os.getpid())


def test_kill_tree_never_signals_itself_or_init() -> None:
    started = time.monotonic()
    assert kill_tree([os.getpid(), 1, 0, -1], deadline=1.0) == []
    assert kill_tree([], deadline=1.0) == []
    assert time.monotonic() - started < 1.0


@needs_linux
def test_kill_tree_tolerates_pids_that_do_not_exist() -> None:
    assert kill_tree([free_pid()], deadline=1.0) == []
