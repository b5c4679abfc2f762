"""Leak detection: fds, child processes, System V IPC objects and listening ports.

Each concern lives in its own module so that a suite can use one detector
without the others (the IPC lister, say, inside its own namespace); this
package only re-exports their public names.
"""

from __future__ import annotations

from fdpass_conformance.leaks.fds import FD_KINDS, FdInfo, fd_count, fd_inventory, summarize
from fdpass_conformance.leaks.ipcs import (
    IPC_KINDS,
    IpcObject,
    ipcs_command,
    list_ipc_objects,
    mode_from_string,
    parse_ipcs,
    queue_senders,
    remove_ipc_object,
)
from fdpass_conformance.leaks.ports import listening_ports, port_is_free
from fdpass_conformance.leaks.procs import (
    ProcessInfo,
    child_pids,
    child_processes,
    is_same_process,
)
from fdpass_conformance.leaks.snapshot import (
    LEAK_KINDS,
    IpcLister,
    Leak,
    LeakError,
    Snapshot,
    assert_no_leaks,
    cleanup_leaks,
    diff,
    take_snapshot,
)

__all__ = [
    "FD_KINDS",
    "IPC_KINDS",
    "LEAK_KINDS",
    "FdInfo",
    "IpcLister",
    "IpcObject",
    "Leak",
    "LeakError",
    "ProcessInfo",
    "Snapshot",
    "assert_no_leaks",
    "child_pids",
    "child_processes",
    "cleanup_leaks",
    "diff",
    "fd_count",
    "fd_inventory",
    "ipcs_command",
    "is_same_process",
    "list_ipc_objects",
    "listening_ports",
    "mode_from_string",
    "parse_ipcs",
    "port_is_free",
    "queue_senders",
    "remove_ipc_object",
    "summarize",
    "take_snapshot",
]
