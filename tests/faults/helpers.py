"""Processes that the fault tests drive line by line, always with a deadline."""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from collections.abc import Callable

#: A tracee that does real sendmsg calls on command and prints what happened:
#: "send N" -> "ok,ENOBUFS,..."; "fork N" -> "child ..." then "parent ..." (a
#: forked child sends first); "status" -> its TracerPid and State; "quit".
SENDMSG_LOOP = r"""
import errno, os, socket, sys
a, b = socket.socketpair()
b.setblocking(False)

def send(n):
    out = []
    for _ in range(n):
        try:
            a.sendmsg([b"x"])
            out.append("ok")
        except OSError as exc:
            out.append(errno.errorcode[exc.errno])
        try:
            b.recv(64)
        except BlockingIOError:
            pass
    return ",".join(out)

def status():
    with open("/proc/self/status") as fh:
        fields = dict(line.split(":", 1) for line in fh if ":" in line)
    return "tracer=%s state=%s" % (fields["TracerPid"].strip(), fields["State"].split()[0])

print("ready", flush=True)
for line in sys.stdin:
    cmd, _, arg = line.strip().partition(" ")
    if cmd == "send":
        print(send(int(arg)), flush=True)
    elif cmd == "fork":
        pid = os.fork()
        if pid == 0:
            print("child " + send(int(arg)), flush=True)
            os._exit(0)
        os.waitpid(pid, 0)
        print("parent " + send(int(arg)), flush=True)
    elif cmd == "status":
        print(status(), flush=True)
    elif cmd == "quit":
        break
"""


class LineProcess:
    """A subprocess spoken to by lines; every read has a deadline; close() always reaps it."""

    def __init__(self, source: str, timeout: float = 10.0) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", source],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self._buf = b""
        try:
            first = self.readline(timeout)
        except BaseException:
            self.close()
            raise
        if first != "ready":
            self.close()
            raise AssertionError(f"tracee did not start: {first!r}")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def readline(self, timeout: float = 10.0) -> str:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no line from pid {self.pid} within {timeout:g}s")
            ready, _, _ = select.select([fd], [], [], remaining)
            if ready:
                chunk = os.read(fd, 4096)
                if not chunk:
                    raise EOFError(f"pid {self.pid} closed its stdout: {self._stderr()}")
                self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line.decode()

    def ask(self, command: str, timeout: float = 10.0) -> str:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command.encode() + b"\n")
        self.proc.stdin.flush()
        return self.readline(timeout)

    def _stderr(self) -> str:
        if self.proc.poll() is None or self.proc.stderr is None:
            return ""
        return self.proc.stderr.read().decode(errors="replace")[-500:]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


def proc_state(pid: int) -> str:
    """The one-letter State of ``pid`` from /proc (R, S, T, t, Z...)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("State:"):
                return line.split()[1]
    raise AssertionError(f"no State in /proc/{pid}/status")


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``predicate()`` until true; AssertionError naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.005)


def untraced_and_running(pid: int) -> bool:
    """strace has let go of ``pid`` and it runs again (not stopped, not traced)."""
    from fdpass_conformance.faults.syscall import tracer_pid

    return tracer_pid(pid) == 0 and proc_state(pid) in ("S", "R")


def dead_pid() -> int:
    """The pid of a child that has exited and been reaped (no process has it now)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        os._exit(0)
    os.waitpid(pid, 0)
    return pid
