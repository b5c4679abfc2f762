"""Forking a child that can never outlive the run nor run the parent's teardown.

A child that returns into pytest would run the rest of the session twice; a
child orphaned by a crashed parent would keep ports and queues alive. So each
child leaves with ``os._exit``, and on Linux dies with its parent.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import traceback
import warnings
from collections.abc import Callable

_PR_SET_PDEATHSIG = 1
_IS_LINUX = sys.platform.startswith("linux")
_libc = ctypes.CDLL(None, use_errno=True) if _IS_LINUX else None

#: Exit status of a child whose body raised.
CRASHED = 70


def die_with_parent(parent_pid: int) -> None:
    """Ask the kernel to SIGKILL us when the parent dies (Linux); no-op elsewhere."""
    if _libc is not None:
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(CRASHED)


def reset_signals() -> None:
    """Default dispositions, except SIGPIPE ignored as in any Python process."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD, signal.SIGALRM, signal.SIGUSR1):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)


def fork_child(body: Callable[[], int], *, new_group: bool = False) -> int:
    """Fork; the child runs ``body`` and exits with its status. Returns the pid."""
    parent = os.getpid()
    sys.stdout.flush()
    sys.stderr.flush()
    with warnings.catch_warnings():
        # Python 3.12+ warns when a threaded process forks; our children only
        # run async-signal-safe work before they exec or use their own fds.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid:
        return pid
    status = CRASHED
    try:
        if new_group:
            os.setpgid(0, 0)
        die_with_parent(parent)
        reset_signals()
        status = body()
    except BaseException:
        with contextlib.suppress(BaseException):
            os.write(2, traceback.format_exc().encode(errors="replace"))
    finally:
        os._exit(status)
