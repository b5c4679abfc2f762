"""Linux socket tables (``/proc/<pid>/net/{tcp,tcp6,unix}``), keyed by inode.

An fd of a socket only reads ``socket:[inode]``; these tables are how the
kernel tells what the inode is (TCP or Unix, listening or connected, which
addresses). They are per network namespace, so they are read through the
pid whose fds are being explained.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

TCP_LISTEN = 0x0A


@dataclass(frozen=True)
class TcpEntry:
    inode: int
    local: tuple[str, int]
    remote: tuple[str, int]
    state: int

    @property
    def listening(self) -> bool:
        return self.state == TCP_LISTEN


@dataclass(frozen=True)
class UnixEntry:
    inode: int
    path: str  # "" for an unnamed socket; abstract names start with "@"


def _hex_address(text: str) -> tuple[str, int]:
    """Decode ``0100007F:1F90``: address words in host byte order, port in hex."""
    addr_hex, port_hex = text.split(":")
    words = [int(addr_hex[i : i + 8], 16) for i in range(0, len(addr_hex), 8)]
    raw = b"".join(struct.pack("=I", word) for word in words)
    family = socket.AF_INET if len(raw) == 4 else socket.AF_INET6
    return socket.inet_ntop(family, raw), int(port_hex, 16)


def _read_lines(path: str) -> list[str]:
    """Data lines of a table; a missing table (no IPv6, process gone) is empty."""
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read().splitlines()[1:]
    except (FileNotFoundError, ProcessLookupError):
        return []


def tcp_entries(pid: int | str = "self") -> list[TcpEntry]:
    """TCP sockets (IPv4 and IPv6) of the pid's network namespace.

    A list, not a map: sockets in TIME_WAIT all have inode 0.
    """
    entries: list[TcpEntry] = []
    for name in ("tcp", "tcp6"):
        for line in _read_lines(f"/proc/{pid}/net/{name}"):
            # sl local rem st tx:rx tr:when retrnsmt uid timeout inode ...
            fields = line.split()
            if len(fields) < 10:
                continue
            entries.append(
                TcpEntry(
                    int(fields[9]),
                    _hex_address(fields[1]),
                    _hex_address(fields[2]),
                    int(fields[3], 16),
                )
            )
    return entries


def tcp_table(pid: int | str = "self") -> dict[int, TcpEntry]:
    """TCP sockets that belong to an fd (inode not 0), by inode."""
    return {entry.inode: entry for entry in tcp_entries(pid) if entry.inode}


def unix_table(pid: int | str = "self") -> dict[int, UnixEntry]:
    """Unix sockets of the pid's network namespace by inode."""
    entries: dict[int, UnixEntry] = {}
    for line in _read_lines(f"/proc/{pid}/net/unix"):
        # Num RefCount Protocol Flags Type St Inode [Path]
        fields = line.split(maxsplit=7)
        if len(fields) < 7:
            continue
        inode = int(fields[6])
        entries[inode] = UnixEntry(inode, fields[7] if len(fields) > 7 else "")
    return entries
