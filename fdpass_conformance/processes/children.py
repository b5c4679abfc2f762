"""Forked children as function calls: a value or a traceback back, within a deadline.

Fd tables, SIGPIPE and IPC namespaces are per process, so the toolkit runs
much of its work in forked children: probes, isolated calls into an
implementation, the workers of ``fdpass_forked_workers``. Each child runs in
its own process group (what it starts dies with it when it is reaped), dies
with this process, resets signals, sends back a pickled result through a pipe
and leaves with ``os._exit``. The parent never blocks past a deadline: a child
still running then is killed with its group and reaped.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pickle
import select
import signal
import struct
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal, NoReturn

from .fork import CRASHED, die_with_parent, flush_std, quiet_fork, reset_signals
from .wait import describe_exit, signal_quietly

#: Default seconds that ``close`` lets children finish on their own before SIGKILL.
CLOSE_GRACE = 1.0
#: Seconds to wait for SIGKILLed children to be reaped before giving up loudly.
KILL_WAIT = 5.0
#: How often exits are polled while pipes are open (a grandchild may hold one open).
_POLL_INTERVAL = 0.05
#: How often exits are polled once every pipe is at EOF: the exit is imminent.
_EXIT_POLL_INTERVAL = 0.002

_HEADER = struct.Struct("!Q")
_HAS_WAITID = hasattr(os, "waitid") and hasattr(os, "WNOWAIT")
#: Read ends of every live group's result pipes in this process: a child closes
#: them all, so that it holds nothing of its siblings or of other groups.
_OPEN_RESULT_FDS: set[int] = set()

Outcome = Literal["returned", "raised", "died"]


@dataclass(frozen=True)
class ChildError:
    """An exception raised in a child, as text: its object stays in the child."""

    type: str
    message: str
    traceback: str


@dataclass(frozen=True)
class ChildResult:
    """What became of child ``index`` (0 for :func:`call_in_child`).

    ``returncode`` follows subprocess: the exit status, or ``-signal`` when a
    signal killed the child; None when someone else reaped it.
    """

    index: int
    pid: int
    outcome: Outcome
    returncode: int | None
    value: object = None
    error: ChildError | None = None

    @property
    def ok(self) -> bool:
        return self.outcome == "returned"

    @property
    def status(self) -> int | None:
        """``returncode``, the name :func:`call_in_child`'s callers compare with 0."""
        return self.returncode

    @property
    def output(self) -> bytes:
        """What a :func:`call_in_child` body returned, or ``"Type: message"`` if it raised."""
        if self.error is not None:
            name = self.error.type.rsplit(".", 1)[-1]  # the class's __name__
            return f"{name}: {self.error.message}".encode(errors="replace")
        return self.value if isinstance(self.value, bytes) else b""

    def get(self) -> object:
        """The returned value; a child that raised or died raises ChildFailed here."""
        if self.outcome == "returned":
            return self.value
        raise ChildFailed(self)

    def describe(self) -> str:
        """One paragraph for an assertion message, with the child's traceback."""
        who = f"forked child {self.index} (pid {self.pid})"
        if self.outcome == "returned":
            return f"{who} returned {self.value!r}"
        if self.error is not None:
            return f"{who} raised {self.error.type}: {self.error.message}\n{self.error.traceback}"
        return f"{who} died without a result: {describe_exit(self.returncode)}"


class ChildFailed(Exception):
    """A child raised or died where a value was expected."""

    def __init__(self, result: ChildResult) -> None:
        super().__init__(result.describe())
        self.result = result


@dataclass
class _Child:
    index: int
    pid: int
    rfd: int | None
    buf: bytearray = field(default_factory=bytearray)
    reaped: bool = False
    returncode: int | None = None
    result: ChildResult | None = None


class WorkerGroup:
    """Children forked by one :func:`fork_workers` call, owned by the forking process.

    Only the owner waits for, signals or reaps them; a child that inherited
    this object can call ``close`` harmlessly (it does nothing there).
    """

    def __init__(self, deadline: float) -> None:
        self._owner = os.getpid()
        self._deadline = time.monotonic() + deadline
        self._children: list[_Child] = []

    @property
    def pids(self) -> list[int]:
        return [child.pid for child in self._children]

    def __len__(self) -> int:
        return len(self._children)

    def results(self, timeout: float | None = None) -> list[ChildResult]:
        """Wait for every child; by default until the group's deadline.

        Raises TimeoutError naming each child still running. The children
        that finished keep their results, so a later call only waits for the rest.
        """
        self._require_owner("results")
        budget = self._deadline - time.monotonic() if timeout is None else timeout
        stuck = self._wait(time.monotonic() + budget)
        if stuck:
            raise TimeoutError(
                f"forked children did not finish within {max(budget, 0):.1f}s: "
                f"{_name_children(stuck)}"
            )
        return [child.result for child in self._children if child.result is not None]

    def kill(self, index: int, sig: int = signal.SIGKILL) -> None:
        """Signal child ``index``; a reaped child's pid may be reused, so that raises."""
        self._require_owner("kill")
        child = self._children[index]
        if child.reaped:
            raise ProcessLookupError(
                errno.ESRCH, f"forked child {index} (pid {child.pid}) was already reaped"
            )
        os.kill(child.pid, sig)

    def close(self, grace: float = CLOSE_GRACE) -> None:
        """Reap every child: ``grace`` seconds to finish, then SIGKILL; idempotent.

        Raises RuntimeError if a SIGKILLed child is still not reaped after
        KILL_WAIT seconds (a process stuck in the kernel), naming it.
        """
        if os.getpid() != self._owner:
            return
        pending = self._wait(time.monotonic() + max(grace, 0.0))
        for child in pending:
            _kill_group(child.pid)
            signal_quietly(child.pid, signal.SIGKILL)  # in case it left its group
        unreaped = self._wait(time.monotonic() + KILL_WAIT)
        for child in self._children:
            _close_fd(child)
        if unreaped:
            raise RuntimeError(
                f"forked children not reaped {KILL_WAIT}s after SIGKILL: {_name_children(unreaped)}"
            )

    def __enter__(self) -> WorkerGroup:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _spawn(self, index: int, target: Callable[[int], object]) -> None:
        rfd, wfd = os.pipe()
        parent = os.getpid()
        try:
            pid = quiet_fork()
        except BaseException:
            os.close(rfd)
            os.close(wfd)
            raise
        if pid == 0:
            os.close(rfd)
            _child_main(index, target, wfd, parent)
        os.close(wfd)
        # The child does it too: whoever runs first wins; later it may have exited.
        with contextlib.suppress(OSError):
            os.setpgid(pid, pid)
        _OPEN_RESULT_FDS.add(rfd)
        self._children.append(_Child(index, pid, rfd))

    def _wait(self, limit: float) -> list[_Child]:
        """Collect what arrives until every child has a result or ``limit`` passes."""
        while True:
            pending = [child for child in self._children if child.result is None]
            for child in pending:
                self._poll_exit(child)
            pending = [child for child in pending if child.result is None]
            remaining = limit - time.monotonic()
            if not pending or remaining <= 0:
                return pending
            fds = {child.rfd: child for child in pending if child.rfd is not None}
            for fd in _readable(list(fds), min(remaining, _POLL_INTERVAL)):
                _read_some(fds[fd])

    def _poll_exit(self, child: _Child) -> None:
        if not child.reaped and not _reap(child):
            return
        _drain(child)
        _close_fd(child)
        child.result = _decode(child)

    def _require_owner(self, what: str) -> None:
        if os.getpid() != self._owner:
            raise RuntimeError(f"WorkerGroup.{what}() called outside the process that forked it")


def fork_workers(n: int, target: Callable[[int], object], *, deadline: float = 10.0) -> WorkerGroup:
    """Fork ``n`` children; child ``i`` runs ``target(i)`` and reports back.

    If a fork fails midway, the children already forked are killed and reaped.
    """
    if n < 0:
        raise ValueError(f"fork_workers: n must be >= 0, got {n}")
    group = WorkerGroup(deadline)
    flush_std()
    try:
        for index in range(n):
            group._spawn(index, target)
    except BaseException:
        group.close(grace=0.0)
        raise
    return group


def call_in_child(fn: Callable[[], bytes | None], timeout: float = 10.0) -> ChildResult:
    """Run ``fn`` in a forked child; its bytes are ``result.output``, its exit ``result.status``.

    The status is 0 when ``fn`` returned, 1 when it raised (``output`` is then
    ``"ExceptionName: message"``), minus a signal when one killed the child.
    Past ``timeout`` seconds the child is killed with its group and reaped, and
    TimeoutError is raised.
    """
    group = fork_workers(1, lambda _index: fn() or b"", deadline=timeout)
    try:
        (result,) = group.results()
    except TimeoutError:
        raise TimeoutError(
            f"child {group.pids[0]} did not finish within {timeout:g}s; killed it"
        ) from None
    finally:
        group.close(grace=0.0)
    return result


# -- the child -----------------------------------------------------------


def _child_main(index: int, target: Callable[[int], object], wfd: int, parent: int) -> NoReturn:
    """Run the target and leave with os._exit: pytest's teardown and atexit
    handlers belong to the parent and must never run here."""
    code = CRASHED
    try:
        identity = _fd_identity(wfd)
        try:
            _become_worker(parent)
            outcome, frame = _frame("returned", target(index))
        except BaseException as exc:
            outcome, frame = _frame("raised", _child_error(exc))
        if _fd_identity(wfd) != identity:
            _complain(index, "the target closed or replaced the result pipe; no result sent")
        else:
            _write_all(wfd, frame)
            code = 0 if outcome == "returned" else 1
        flush_std()
    except BaseException as exc:
        _complain(index, f"could not report its result: {type(exc).__name__}: {exc}")
    finally:
        os._exit(code)


def _become_worker(parent: int) -> None:
    for fd in list(_OPEN_RESULT_FDS):
        with contextlib.suppress(OSError):
            os.close(fd)
    _OPEN_RESULT_FDS.clear()
    os.setpgid(0, 0)
    die_with_parent(parent, CRASHED)
    reset_signals()


def _frame(outcome: Outcome, payload: object) -> tuple[Outcome, bytes]:
    """The length-prefixed pickle of (outcome, payload); a result that cannot be
    pickled becomes an error, so the parent learns why instead of seeing a death."""
    try:
        body = pickle.dumps((outcome, payload))
    except Exception as exc:
        outcome = "raised"
        error = ChildError(
            "pickle.PicklingError",
            f"the result of the target cannot be pickled: {type(exc).__name__}: {exc}",
            "",
        )
        body = pickle.dumps((outcome, error))
    return outcome, _HEADER.pack(len(body)) + body


def _child_error(exc: BaseException) -> ChildError:
    cls = type(exc)
    name = (
        cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    )
    text = "".join(traceback.format_exception(cls, exc, exc.__traceback__))
    return ChildError(name, str(exc), text)


def _fd_identity(fd: int) -> tuple[int, int] | None:
    try:
        st = os.fstat(fd)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _complain(index: int, what: str) -> None:
    with contextlib.suppress(OSError):
        os.write(2, f"forked child {index} (pid {os.getpid()}): {what}\n".encode())


# -- the parent ----------------------------------------------------------


def _reap(child: _Child) -> bool:
    """Reap the child if it has exited; its process group dies first.

    With waitid(WNOWAIT) the zombie still pins its pid, so killing the group
    cannot hit an unrelated process that reused the number.
    """
    try:
        if _HAS_WAITID:
            if os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT | os.WNOHANG) is None:
                return False
            _kill_group(child.pid)
            _, status = os.waitpid(child.pid, 0)
        else:
            pid, status = os.waitpid(child.pid, os.WNOHANG)
            if pid == 0:
                return False
        child.returncode = os.waitstatus_to_exitcode(status)
    except ChildProcessError:  # reaped by someone else (SIGCHLD ignored, waitpid(-1))
        child.returncode = None
    child.reaped = True
    return True


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _readable(fds: list[int], timeout: float) -> list[int]:
    if not fds:
        time.sleep(min(timeout, _EXIT_POLL_INTERVAL))
        return []
    if hasattr(select, "poll"):
        poller = select.poll()
        for fd in fds:
            poller.register(fd, select.POLLIN)
        return [fd for fd, _ in poller.poll(timeout * 1000)]
    return list(select.select(fds, [], [], timeout)[0])


def _read_some(child: _Child) -> None:
    assert child.rfd is not None
    data = os.read(child.rfd, 65536)
    if data:
        child.buf += data
    else:
        _close_fd(child)


def _drain(child: _Child) -> None:
    """Read what an exited child left in its pipe without waiting for EOF,
    which a grandchild holding the write end would delay forever."""
    if child.rfd is None:
        return
    os.set_blocking(child.rfd, False)
    while True:
        try:
            data = os.read(child.rfd, 65536)
        except BlockingIOError:
            return
        if not data:
            return
        child.buf += data


def _close_fd(child: _Child) -> None:
    if child.rfd is not None:
        _OPEN_RESULT_FDS.discard(child.rfd)
        os.close(child.rfd)
        child.rfd = None


def _decode(child: _Child) -> ChildResult:
    buf = bytes(child.buf)
    if len(buf) >= _HEADER.size:
        (size,) = _HEADER.unpack_from(buf)
        body = buf[_HEADER.size : _HEADER.size + size]
        if len(body) == size:
            try:
                outcome, payload = pickle.loads(body)
            except Exception as exc:
                error = ChildError(
                    type(exc).__name__, f"cannot unpickle the child's result: {exc}", ""
                )
                return ChildResult(child.index, child.pid, "raised", child.returncode, None, error)
            if outcome == "returned":
                return ChildResult(child.index, child.pid, "returned", child.returncode, payload)
            return ChildResult(child.index, child.pid, "raised", child.returncode, None, payload)
    return ChildResult(child.index, child.pid, "died", child.returncode)


def _name_children(children: Iterable[_Child]) -> str:
    return ", ".join(f"child {c.index} (pid {c.pid})" for c in children)
