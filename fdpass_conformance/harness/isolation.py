"""The fallback when IPC namespaces are unavailable: serialize global ``ipcs`` diffs.

Why: without a namespace of its own, a leak check can only diff the global
``ipcs`` listing taken before and after a test. Two pytest-xdist workers (or
two pytest runs) doing that at once would see each other's objects as leaks,
so the window between the two snapshots must be exclusive machine-wide. A
file lock in the temporary directory is that mutex: it works across
processes, on Linux and macOS, and the kernel releases it if the holder dies.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
from collections.abc import Callable, Iterator

import filelock

from fdpass_conformance.harness.namespace import (
    IPC_NAMESPACE_REASON,
    IPC_NAMESPACES,
    enter_new_ipc_namespace,
)
from fdpass_conformance.leaks.ipcs import list_ipc_objects, remove_ipc_object
from fdpass_conformance.processes import ChildResult, call_in_child

LOCK_NAME = "fdpass-conformance-ipc.lock"


def lock_path() -> str:
    """Where the machine-wide lock lives (the temp dir, as every worker agrees on it)."""
    return os.path.join(tempfile.gettempdir(), LOCK_NAME)


@contextlib.contextmanager
def global_ipc_lock(timeout: float, *, path: str | None = None) -> Iterator[None]:
    """Hold the machine-wide IPC lock for the body; wait at most ``timeout`` seconds for it.

    Raises TimeoutError with a one-line message naming the lock file when it
    cannot be had in time (another process keeps it: a slow or hung test).
    A negative, infinite or NaN timeout is a ValueError: nothing here may wait
    forever. Not reentrant: nesting it in one process times out. ``path``
    overrides the lock file (tests use a private one).
    """
    if not math.isfinite(timeout) or timeout < 0:
        raise ValueError(f"timeout must be a finite number of seconds >= 0, got {timeout}")
    path = lock_path() if path is None else path
    # mode 0o666: whichever user creates it first, the others can still lock it.
    lock = filelock.FileLock(path, timeout=timeout, mode=0o666)
    try:
        lock.acquire()
    except filelock.Timeout:
        raise TimeoutError(
            f"could not take the global IPC lock {path} within {timeout:g}s "
            "(another test process holds it)"
        ) from None
    except PermissionError as exc:
        raise PermissionError(
            exc.errno,
            f"cannot use the global IPC lock {path}: {exc.strerror} (made by another user?)",
        ) from None
    try:
        yield
    finally:
        lock.release()


def isolation_mode() -> str:
    """How IPC leak checks are isolated in this run, for the pytest report header."""
    if IPC_NAMESPACES:
        return "ipc-namespace"
    return f"global-ipcs+lock ({IPC_NAMESPACE_REASON})"


def call_isolated(
    fn: Callable[[], bytes | None], timeout: float = 30.0, lock_timeout: float = 300.0
) -> ChildResult:
    """Run ``fn`` in a forked child inside the isolation the servers use.

    Why: any call into an implementation (its factory, ``is_supported()``) may
    create IPC objects, and the host must never keep one. In an IPC namespace of
    its own, whatever the child makes vanishes with it; without one, the child
    runs under the global lock and every object that appeared meanwhile is removed.
    """
    if IPC_NAMESPACES:

        def inside() -> bytes | None:
            enter_new_ipc_namespace()
            return fn()

        return call_in_child(inside, timeout)
    with global_ipc_lock(lock_timeout):
        before = {(o.kind, o.id) for o in list_ipc_objects()}
        try:
            return call_in_child(fn, timeout)
        finally:
            for obj in list_ipc_objects():
                if (obj.kind, obj.id) not in before:
                    with contextlib.suppress(OSError):
                        remove_ipc_object(obj)
