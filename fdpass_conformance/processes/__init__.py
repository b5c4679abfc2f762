"""Child processes of the toolkit: forking, waiting with deadlines, killing trees.

One place for all of it, because harness, faults, leaks, fixtures, bench and
tests all fork children and every one of them must die with its parent,
never block the run past a deadline, and be described the same way when it
ends badly. Three modules: ``fork`` (the child side), ``wait`` (reaping,
killing, describing statuses) and ``children`` (a child as a function call
with a result back).
"""

from __future__ import annotations

from .children import (
    ChildError,
    ChildFailed,
    ChildResult,
    WorkerGroup,
    call_in_child,
    fork_workers,
)
from .fork import (
    CRASHED,
    die_with_parent,
    exec_dies_with_parent,
    flush_std,
    fork_child,
    quiet_fork,
    reset_signals,
)
from .wait import (
    describe_exit,
    describe_status,
    exit_code,
    has_ended,
    is_zombie,
    kill_and_reap,
    kill_tree,
    signal_quietly,
    try_reap,
    wait_pid,
    wait_status,
)

__all__ = [
    "CRASHED",
    "ChildError",
    "ChildFailed",
    "ChildResult",
    "WorkerGroup",
    "call_in_child",
    "describe_exit",
    "describe_status",
    "die_with_parent",
    "exec_dies_with_parent",
    "exit_code",
    "flush_std",
    "fork_child",
    "fork_workers",
    "has_ended",
    "is_zombie",
    "kill_and_reap",
    "kill_tree",
    "quiet_fork",
    "reset_signals",
    "signal_quietly",
    "try_reap",
    "wait_pid",
    "wait_status",
]
