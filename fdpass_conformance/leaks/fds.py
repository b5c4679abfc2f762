"""The open file descriptors of a process, each classified.

A count alone says that something leaked; the classification says what: a
``unix`` fd left in a worker is a channel end that should have been closed
(FP-06), an inheritable ``tcp`` fd is a received connection without
close-on-exec (FP-05), a ``tcp-listen`` fd in a worker is a listener the
worker should never hold.

On Linux everything comes from procfs: ``/proc/PID/fd/N`` names the object
(``socket:[inode]``, ``pipe:[inode]``, a path), ``/proc/PID/fdinfo/N``
holds the open flags, where O_CLOEXEC lives, and the socket tables under
``/proc/PID/net`` map an inode to TCP or Unix. psutil is not used for this
on Linux because it reports neither close-on-exec nor pipes and Unix
sockets by fd. Elsewhere (macOS) psutil is the portable way to see another
process's sockets and files, and there close-on-exec is known only for the
calling process itself (``fcntl``), else ``None``.
"""

from __future__ import annotations

import fcntl
import os
import socket
import stat
import sys
from collections.abc import Iterable
from dataclasses import dataclass

import psutil  # type: ignore[import-untyped, unused-ignore]

from fdpass_conformance.leaks import _procnet

#: Every kind an fd is classified as, in report order.
FD_KINDS = ("tcp-listen", "tcp", "unix", "pipe", "file", "other")

O_CLOEXEC_LINUX = 0o2000000


@dataclass(frozen=True)
class FdInfo:
    """One open fd of one process.

    ``target`` is what the fd refers to (on Linux the ``/proc/PID/fd/N`` link,
    such as ``socket:[123]``); together with ``fd`` it identifies the open
    object, so a number reused for another object counts as a new fd.
    ``detail`` adds what a reader needs to recognise it (addresses, a socket
    path) and is not part of the identity.
    """

    fd: int
    kind: str
    cloexec: bool | None
    target: str
    detail: str = ""

    def describe(self, pid: int) -> str:
        """One line such as ``fd 7 (unix, cloexec=no) in pid 1234: socket:[99]``."""
        flag = {True: "yes", False: "no", None: "unknown"}[self.cloexec]
        what = f"{self.target} {self.detail}".strip()
        return f"fd {self.fd} ({self.kind}, cloexec={flag}) in pid {pid}: {what}"


def fd_inventory(pid: int) -> list[FdInfo]:
    """Every open fd of ``pid`` in fd order; ProcessLookupError if there is no such process.

    Inspecting the calling process opens fds of its own while it looks (the
    directory listing, the fdinfo files); those are not reported.
    """
    if sys.platform.startswith("linux"):
        return _linux_inventory(pid)
    return _psutil_inventory(pid)


def fd_count(pid: int) -> int:
    """How many fds ``pid`` has open, consistent with ``len(fd_inventory(pid))``.

    psutil's ``num_fds`` would count, on Linux, the fd that its own listing
    of ``/proc/self/fd`` holds open; counting only fds whose link can still
    be read afterwards leaves that transient fd out.
    """
    if sys.platform.startswith("linux"):
        return len(_linux_links(pid))
    try:
        return int(psutil.Process(pid).num_fds())
    except psutil.NoSuchProcess:
        raise ProcessLookupError(f"no process with pid {pid}") from None


def fd_links(pid: int) -> dict[int, str]:
    """fd -> what it refers to (``socket:[inode]``, ``pipe:[inode]``, a path), cheaply.

    On Linux only the ``/proc/PID/fd`` links are read, without classifying
    sockets through the socket tables, which is what makes it cheap enough to
    take after every step. ProcessLookupError if there is no such process.
    """
    if sys.platform.startswith("linux"):
        return _linux_links(pid)
    return {f.fd: f.target for f in _psutil_inventory(pid)}


def summarize(inventory: Iterable[FdInfo]) -> dict[str, int]:
    """Count fds per kind; every kind is present, so two summaries compare key by key."""
    counts = dict.fromkeys(FD_KINDS, 0)
    for info in inventory:
        counts[info.kind] = counts.get(info.kind, 0) + 1
    return counts


def _linux_links(pid: int) -> dict[int, str]:
    """fd -> link text, skipping fds that closed while being listed."""
    base = f"/proc/{pid}/fd"
    try:
        names = os.listdir(base)
    except FileNotFoundError:
        raise ProcessLookupError(f"no process with pid {pid}") from None
    links: dict[int, str] = {}
    for name in names:
        try:
            links[int(name)] = os.readlink(f"{base}/{name}")
        except FileNotFoundError:  # closed meanwhile, e.g. the listing's own fd
            continue
    return links


def _linux_cloexec(pid: int, fd: int) -> bool | None:
    try:
        with open(f"/proc/{pid}/fdinfo/{fd}", encoding="ascii") as f:
            for line in f:
                if line.startswith("flags:"):
                    return bool(int(line.split()[1], 8) & O_CLOEXEC_LINUX)
    except (FileNotFoundError, ProcessLookupError):
        pass
    return None


def _socket_inode(link: str) -> int | None:
    if link.startswith("socket:[") and link.endswith("]"):
        return int(link[len("socket:[") : -1])
    return None


def _linux_inventory(pid: int) -> list[FdInfo]:
    # Read every link before opening anything: a file opened here could take
    # the number of an fd that was closed during the listing.
    links = _linux_links(pid)
    tcp: dict[int, _procnet.TcpEntry] = {}
    unix: dict[int, _procnet.UnixEntry] = {}
    if any(_socket_inode(link) is not None for link in links.values()):
        tcp = _procnet.tcp_table(pid)
        unix = _procnet.unix_table(pid)
    inventory: list[FdInfo] = []
    for fd in sorted(links):
        link = links[fd]
        cloexec = _linux_cloexec(pid, fd)
        inode = _socket_inode(link)
        kind, detail = "other", ""
        if inode is not None:
            if inode in tcp:
                entry = tcp[inode]
                local = _endpoint(entry.local)
                if entry.listening:
                    kind, detail = "tcp-listen", local
                else:
                    kind, detail = "tcp", f"{local} -> {_endpoint(entry.remote)}"
            elif inode in unix:
                kind, detail = "unix", unix[inode].path
        elif link.startswith("pipe:["):
            kind = "pipe"
        elif link.startswith("/"):
            kind = "file"
        inventory.append(FdInfo(fd, kind, cloexec, link, detail))
    return inventory


def _endpoint(address: tuple[str, int]) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _psutil_inventory(pid: int) -> list[FdInfo]:
    """Non-Linux: psutil's sockets and files, plus fstat for the caller's own fds."""
    try:
        proc = psutil.Process(pid)
        conns = getattr(proc, "net_connections", None) or proc.connections
        connections = list(conns(kind="all"))
        files = list(proc.open_files())
    except psutil.NoSuchProcess:
        raise ProcessLookupError(f"no process with pid {pid}") from None
    found: dict[int, FdInfo] = {}
    for conn in connections:
        fd = int(conn.fd)
        if fd < 0:
            continue
        local = _psutil_addr(conn.laddr)
        if conn.family == socket.AF_UNIX:
            found[fd] = FdInfo(fd, "unix", None, "socket", local)
        elif conn.type == socket.SOCK_STREAM:
            if conn.status == psutil.CONN_LISTEN:
                found[fd] = FdInfo(fd, "tcp-listen", None, "socket", local)
            else:
                remote = _psutil_addr(conn.raddr)
                found[fd] = FdInfo(fd, "tcp", None, "socket", f"{local} -> {remote}")
        else:
            found[fd] = FdInfo(fd, "other", None, "socket", local)
    for opened in files:
        fd = int(opened.fd)
        if fd >= 0:
            found[fd] = FdInfo(fd, "file", None, str(opened.path))
    if pid == os.getpid():
        _add_own_fds(found)
    return [found[fd] for fd in sorted(found)]


def _psutil_addr(addr: object) -> str:
    """psutil gives ``(ip, port)`` for inet sockets and a path string for Unix ones."""
    if isinstance(addr, tuple) and len(addr) == 2:
        return _endpoint((str(addr[0]), int(addr[1])))
    return str(addr) if addr else ""


def _add_own_fds(found: dict[int, FdInfo]) -> None:
    """Fill in the calling process's fds that psutil does not list, with cloexec."""
    try:
        names = os.listdir("/dev/fd")
    except OSError:
        return
    for name in names:
        fd = int(name)
        try:
            mode = os.fstat(fd).st_mode
            cloexec = bool(fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC)
        except OSError:  # the listing's own fd, closed by now
            continue
        known = found.get(fd)
        if known is not None:
            found[fd] = FdInfo(fd, known.kind, cloexec, known.target, known.detail)
        elif stat.S_ISFIFO(mode):
            found[fd] = FdInfo(fd, "pipe", cloexec, "pipe")
        elif stat.S_ISREG(mode):
            found[fd] = FdInfo(fd, "file", cloexec, "file")
        else:
            found[fd] = FdInfo(fd, "other", cloexec, "socket" if stat.S_ISSOCK(mode) else "")
