"""Fault injection in three layers, from the most real to the most portable.

* ``kernel``: real limits and signals (RLIMIT_NOFILE through prlimit, a full
  fd table, SIGKILL/SIGSTOP); language-agnostic.
* ``syscall``: strace rewrites the Nth call of a syscall to fail with an
  errno in a running process; language-agnostic, Linux only.
* ``python``: a wrapper raises OSError on the Nth call of a Python callable;
  everywhere, but only for Python code in this process (and forks of it).

Each layer module has ``available() -> (bool, reason)``; :data:`LAYERS`
describes them for the report header without probing at import (the
syscall probe runs strace once, on first use).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from fdpass_conformance.faults import kernel, pylevel, syscall
from fdpass_conformance.faults.errors import FaultUnavailable, errno_name, parse_errno
from fdpass_conformance.faults.kernel import (
    close_fds,
    cont,
    fill_fd_table,
    get_nofile_limit,
    kill,
    restore_nofile_limit,
    set_nofile_limit,
    stop,
)
from fdpass_conformance.faults.pylevel import PatchedErrno
from fdpass_conformance.faults.syscall import SyscallFault


@dataclass(frozen=True)
class FaultLayer:
    """One injection layer: what it does and a (cached where costly) availability check."""

    name: str
    description: str
    check: Callable[[], tuple[bool, str]]

    def available(self) -> tuple[bool, str]:
        return self.check()

    def status(self) -> str:
        """``"available"``, ``"available (note)"`` or ``"unavailable: reason"``, for a report."""
        ok, why = self.check()
        if ok:
            return f"available ({why})" if why else "available"
        return f"unavailable: {why}"


LAYERS: dict[str, FaultLayer] = {
    "kernel": FaultLayer(
        "kernel",
        "RLIMIT_NOFILE via prlimit, full fd tables, SIGKILL/SIGSTOP (any language)",
        kernel.available,
    ),
    "syscall": FaultLayer(
        "syscall",
        "strace -e inject: the Nth call of a syscall fails with an errno (any language, Linux)",
        syscall.available,
    ),
    "python": FaultLayer(
        "python",
        "a wrapper raises OSError on the Nth call of a Python callable (this process only)",
        pylevel.available,
    ),
}


def layer_report() -> dict[str, str]:
    """{layer name: status line}, for the pytest report header."""
    return {name: layer.status() for name, layer in LAYERS.items()}


__all__ = [
    "LAYERS",
    "FaultLayer",
    "FaultUnavailable",
    "PatchedErrno",
    "SyscallFault",
    "close_fds",
    "cont",
    "errno_name",
    "fill_fd_table",
    "get_nofile_limit",
    "kill",
    "layer_report",
    "parse_errno",
    "restore_nofile_limit",
    "set_nofile_limit",
    "stop",
]
