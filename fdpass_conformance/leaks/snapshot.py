"""Snapshots of what a set of processes holds, and the assertion that nothing leaked.

A check takes one snapshot before the code under test runs and one after,
and every object present after but not before is a leak: fds of the given
processes, their descendants, System V objects, listening ports. Objects
that vanished in between are never leaks; a test may well close what
existed before it. The comparison is exact (no tolerance, no counting), so
a leak report names each object, which is what makes it actionable.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from fdpass_conformance.leaks.fds import FdInfo, fd_inventory
from fdpass_conformance.leaks.ipcs import IpcObject, list_ipc_objects, remove_ipc_object
from fdpass_conformance.leaks.ports import listening_ports
from fdpass_conformance.leaks.procs import (
    ProcessInfo,
    child_processes,
    is_same_process,
)
from fdpass_conformance.processes import kill_tree

IpcLister = Callable[[], list[IpcObject]]

#: Leak kinds, in the order ``diff`` reports them.
LEAK_KINDS = ("fd", "process", "ipc", "port")

#: Seconds ``assert_no_leaks`` gives leaked processes to die.
KILL_DEADLINE = 5.0


@dataclass
class Snapshot:
    """What ``pids`` held at one moment.

    ``fds`` has an entry for each pid that was alive; ``children`` holds
    every descendant of those pids; ``ipc`` is ``None`` when no lister was
    given (and is then not compared); ``ports`` maps each listening port of
    the pids (on any address) to the pids that listen on it.
    """

    pids: tuple[int, ...]
    fds: dict[int, list[FdInfo]] = field(default_factory=dict)
    children: dict[int, ProcessInfo] = field(default_factory=dict)
    ipc: list[IpcObject] | None = None
    ports: dict[int, tuple[int, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class Leak:
    """One object present after but not before, named in one line.

    ``ipc`` is set for System V objects and ``process`` for leaked
    processes, so that cleanup can remove exactly them.
    """

    kind: str  # "fd" | "process" | "ipc" | "port"
    description: str
    ipc: IpcObject | None = None
    process: ProcessInfo | None = None

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid


class LeakError(AssertionError):
    """Raised by :func:`assert_no_leaks`; the message lists every leak, one per line."""

    def __init__(self, leaks: Iterable[Leak], context: str = "", notes: Iterable[str] = ()):
        self.leaks = list(leaks)
        self.context = context
        self.notes = list(notes)
        count = len(self.leaks)
        head = f"{count} leak{'' if count == 1 else 's'}"
        if context:
            head += f" [{context}]"
        lines = [head + ":", *(f"  {leak.description}" for leak in self.leaks), *self.notes]
        super().__init__("\n".join(lines))

    def __reduce__(self) -> tuple[type[LeakError], tuple[list[Leak], str, list[str]]]:
        # Rebuild from the leaks, not the message, so the error survives
        # pickling (multiprocessing, xdist) with its structured fields.
        return (type(self), (self.leaks, self.context, self.notes))


def take_snapshot(pids: Iterable[int], ipc_lister: IpcLister | None = list_ipc_objects) -> Snapshot:
    """Record fds, descendants and listening ports of ``pids``, and the IPC objects.

    The IPC objects come from ``ipc_lister`` so that a harness that runs the
    proxy in its own IPC namespace can list that namespace, or one that runs
    tests in parallel can restrict the view to objects it may attribute;
    ``None`` skips IPC. A pid that does not exist is recorded without fds.
    """
    snap = Snapshot(tuple(dict.fromkeys(pids)))
    ports: dict[int, list[int]] = {}
    for pid in snap.pids:
        try:
            snap.fds[pid] = fd_inventory(pid)
            for child in child_processes(pid, recursive=True):
                snap.children.setdefault(child.pid, child)
            for port in sorted(listening_ports(host=None, pid=pid)):
                ports.setdefault(port, []).append(pid)
        except ProcessLookupError:
            snap.fds.pop(pid, None)
    snap.ports = {port: tuple(owners) for port, owners in sorted(ports.items())}
    if ipc_lister is not None:
        snap.ipc = list(ipc_lister())
    return snap


def _fd_identity(info: FdInfo) -> tuple[int, str]:
    # A file unlinked while open keeps its fd; procfs then appends
    # " (deleted)" to the link, which is not a new object.
    return (info.fd, info.target.removesuffix(" (deleted)"))


def _ipc_identity(obj: IpcObject) -> tuple[str, int, int]:
    # The id alone could be recycled by the kernel for a new object; the
    # key tells them apart where it can. Mode and owner may legitimately
    # change (IPC_SET) without making a new object.
    return (obj.kind, obj.id, obj.key)


def diff(before: Snapshot, after: Snapshot) -> list[Leak]:
    """Every object in ``after`` that ``before`` did not have.

    fds are compared per pid, and only for pids present in both snapshots:
    a process that did not exist before has nothing to compare with (it is
    reported as a process leak if it is a descendant). An fd counts as new
    if its number or the object it refers to is new.
    """
    leaks: list[Leak] = []
    for pid, inventory in after.fds.items():
        if pid not in before.fds:
            continue
        old = {_fd_identity(info) for info in before.fds[pid]}
        leaks.extend(
            Leak("fd", info.describe(pid)) for info in inventory if _fd_identity(info) not in old
        )
    old_children = {(p.pid, p.create_time) for p in before.children.values()}
    for _, proc in sorted(after.children.items()):
        if (proc.pid, proc.create_time) not in old_children:
            leaks.append(Leak("process", proc.describe(), process=proc))
    if before.ipc is not None and after.ipc is not None:
        old_ipc = {_ipc_identity(obj) for obj in before.ipc}
        leaks.extend(
            Leak("ipc", obj.describe(), ipc=obj)
            for obj in after.ipc
            if _ipc_identity(obj) not in old_ipc
        )
    for port, owners in after.ports.items():
        if port not in before.ports:
            holders = ", ".join(str(pid) for pid in owners)
            leaks.append(Leak("port", f"port {port} listening in pid {holders}"))
    return leaks


def cleanup_leaks(leaks: Iterable[Leak], deadline: float = KILL_DEADLINE) -> list[str]:
    """Remove leaked IPC objects and kill leaked processes; return one note per action.

    fds and ports are left alone: they belong to live processes that are
    not ours to reach into, and they go away with a killed process anyway.
    Nothing here raises, so that cleanup never hides the leak report.
    """
    leaks = list(leaks)
    notes: list[str] = []
    for leak in leaks:
        if leak.ipc is not None:
            try:
                remove_ipc_object(leak.ipc)
                notes.append(f"cleanup: removed {leak.ipc.kind} id={leak.ipc.id}")
            except Exception as exc:  # report it; the leak report must still come out
                notes.append(f"cleanup: could not remove {leak.ipc.kind} id={leak.ipc.id}: {exc}")
    # Only a process that is still the one the snapshot saw: by now its pid
    # may have been recycled for an unrelated process.
    pids = [leak.process.pid for leak in leaks if leak.process and is_same_process(leak.process)]
    if pids:
        try:
            survivors = kill_tree(pids, deadline)
        except Exception as exc:  # report it; the leak report must still come out
            notes.append(f"cleanup: could not kill pid {', '.join(map(str, pids))}: {exc}")
            return notes
        killed = [pid for pid in pids if pid not in survivors]
        if killed:
            notes.append("cleanup: killed pid " + ", ".join(map(str, killed)))
        if survivors:
            notes.append("cleanup: still alive: pid " + ", ".join(map(str, survivors)))
    return notes


def assert_no_leaks(
    before: Snapshot, after: Snapshot, context: str = "", cleanup: bool = True
) -> None:
    """Raise :class:`LeakError` naming every leak between the two snapshots.

    With ``cleanup`` the leaked IPC objects are removed and the leaked
    processes killed first, so one failing test does not poison the rest
    of the run (a queue outlives every process; a stray worker keeps ports
    and fds). Every IPC object that appeared is removed, so a lister that
    sees objects of tests running in parallel must not be combined with
    cleanup: pass one that sees only this test's objects.
    """
    leaks = diff(before, after)
    if not leaks:
        return
    notes = cleanup_leaks(leaks) if cleanup else []
    raise LeakError(leaks, context, notes)
