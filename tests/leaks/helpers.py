"""Helpers that create real kernel objects and always remove them.

Other suites may run on this machine at the same time, so nothing here
assumes that ``ipcs`` lists only this test's objects: IPC-based checks go
through :class:`OwnIpc`, a lister that reports only objects this test made.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from fdpass_conformance.leaks import IpcObject, list_ipc_objects
from fdpass_conformance.sysv import MessageQueue

DATA = Path(__file__).resolve().parent.parent / "data" / "ipcs"

needs_linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux procfs")
needs_ipcmk = pytest.mark.skipif(shutil.which("ipcmk") is None, reason="needs util-linux ipcmk")


class OwnIpc:
    """Makes real SysV objects, lists only those, and removes them at teardown.

    Its ``lister`` goes through the real ``ipcs`` and filters by the ids made
    here, so a leak check with cleanup can never remove an object that a
    test running in parallel created.
    """

    def __init__(self) -> None:
        self.ids: set[tuple[str, int]] = set()
        self.queues: list[MessageQueue] = []

    def lister(self) -> list[IpcObject]:
        return [obj for obj in list_ipc_objects() if (obj.kind, obj.id) in self.ids]

    def queue(self, mode: int = 0o600) -> MessageQueue:
        q = MessageQueue(mode=mode)
        self.queues.append(q)
        self.ids.add(("queue", q.id))
        return q

    def ipcmk(self, kind: str, mode: int) -> int:
        """Create a shm segment (4 KiB) or semaphore set (2 sems) with ipcmk; return its id."""
        args = {"shm": ["-M", "4096"], "sem": ["-S", "2"]}[kind]
        done = subprocess.run(
            ["ipcmk", *args, "-p", f"{mode:04o}"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
            env={**os.environ, "LC_ALL": "C"},
        )
        found = re.search(r"id: (\d+)", done.stdout)
        assert found is not None, done.stdout
        ident = int(found.group(1))
        self.ids.add((kind, ident))
        return ident

    def cleanup(self) -> None:
        for q in self.queues:
            q.remove()  # idempotent; an already removed queue is fine
        for kind, ident in self.ids:
            if kind != "queue":
                flag = {"shm": "-m", "sem": "-s"}[kind]
                subprocess.run(["ipcrm", flag, str(ident)], capture_output=True, timeout=10)


class Children:
    """Child processes started by a test; all killed and reaped at teardown."""

    def __init__(self) -> None:
        self.pids: list[int] = []
        self.popens: list[subprocess.Popen[str]] = []

    def fork_sleeper(self, seconds: float = 30.0) -> int:
        """A bare ``fork()`` child that sleeps and can never run pytest code."""
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            try:
                time.sleep(seconds)
            finally:
                os._exit(0)
        self.pids.append(pid)
        return pid

    def fork_exiting(self) -> int:
        """A child that exits at once and stays a zombie until reaped."""
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            os._exit(0)
        self.pids.append(pid)
        return pid

    def python(self, code: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, "-c", code],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.popens.append(proc)
        return proc

    def cleanup(self) -> None:
        for pid in self.pids:
            # Only signal a pid that is still our unreaped child: a pid the
            # test already reaped may belong to an unrelated process by now.
            try:
                reaped, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                continue
            if reaped == 0:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)  # SIGKILLed: returns at once
        for proc in self.popens:
            proc.kill()
            proc.communicate(timeout=10)


def read_line(proc: subprocess.Popen[str], timeout: float = 10.0) -> str:
    """Read one line from a child's stdout without ever blocking past ``timeout``."""
    import selectors

    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            raise TimeoutError(f"child {proc.pid} printed nothing within {timeout}s")
    return proc.stdout.readline().strip()


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll ``predicate()`` until it is true or ``timeout`` passes."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.01)
    return bool(predicate())


def free_pid() -> int:
    """A pid no process can have: Linux hands out pids below pid_max only."""
    with open("/proc/sys/kernel/pid_max") as f:
        return int(f.read())
