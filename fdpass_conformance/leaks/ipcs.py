"""System V IPC objects as the real ``ipcs`` command reports them.

The contract defines "no IPC object leaked" as what ``ipcs`` lists, so this
module reads the tool's output instead of ``/proc/sysvipc``: the check then
means the same thing on macOS, where there is no procfs, and it sees exactly
what an operator would see when cleaning up after a crashed run.

Two output families exist. util-linux (and busybox) print one section per
kind with an octal ``perms`` column; the BSD family (macOS, FreeBSD) prints
``T ID KEY MODE OWNER GROUP`` rows with an ``ls``-like mode string. Both are
parsed strictly: a line that fits neither raises ``ValueError`` rather than
being skipped, because a parser that silently finds nothing would make every
leak check pass.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field

#: Kinds in the order ``ipcs`` prints them.
IPC_KINDS = ("queue", "shm", "sem")

_IPCRM_FLAG = {"queue": "-q", "shm": "-m", "sem": "-s"}

_LINUX_SECTIONS = {
    "------ Message Queues": "queue",
    "------ Shared Memory Segments": "shm",
    "------ Semaphore Arrays": "sem",
}
_BSD_SECTIONS = {"Message Queues:": "queue", "Shared Memory:": "shm", "Semaphores:": "sem"}
_BSD_LETTERS = {"q": "queue", "m": "shm", "s": "sem"}

_FLAVORS = {"linux": "linux", "bsd": "bsd", "macos": "bsd", "darwin": "bsd", "freebsd": "bsd"}

#: ``ipcrm`` messages that mean the object is already gone (util-linux first,
#: then the BSD ``err()`` forms built on strerror).
_ALREADY_GONE = ("invalid id", "already removed", "invalid argument", "identifier removed")


@dataclass(frozen=True)
class IpcObject:
    """One System V object: enough to name it in a report and to remove it."""

    kind: str  # "queue" | "shm" | "sem"
    id: int
    key: int
    mode: int  # permission bits, e.g. 0o600
    owner: str
    #: Messages waiting in a queue, where ``ipcs`` shows them (util-linux); else None.
    #: Not part of the identity: the same queue with more messages is the same object.
    messages: int | None = field(default=None, compare=False)

    def describe(self) -> str:
        """One line that lets a reader find the object with ``ipcs`` and ``ipcrm`` it."""
        return (
            f"{self.kind} id={self.id} key=0x{self.key:08x} mode={self.mode:04o} owner={self.owner}"
        )


def parse_ipcs(text: str, flavor: str | None = None) -> list[IpcObject]:
    """Parse ``ipcs`` output of either family; ``flavor=None`` recognises it.

    Raises ``ValueError`` on output that is not ``ipcs`` output or that holds
    a line this parser does not understand.
    """
    if flavor is None:
        flavor = _detect_flavor(text)
    elif flavor not in _FLAVORS:
        raise ValueError(f"unknown ipcs flavor {flavor!r}; expected one of {sorted(_FLAVORS)}")
    if _FLAVORS[flavor] == "linux":
        return _parse_linux(text)
    return _parse_bsd(text)


def _detect_flavor(text: str) -> str:
    lines = [line.strip() for line in text.splitlines()]
    if any(line.startswith(tuple(_LINUX_SECTIONS)) for line in lines):
        return "linux"
    if any(line in _BSD_SECTIONS or line.startswith("IPC status from") for line in lines):
        return "bsd"
    raise ValueError(f"not recognisable as ipcs output: {text[:80]!r}")


def _parse_linux(text: str) -> list[IpcObject]:
    objects: list[IpcObject] = []
    kind: str | None = None
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        section = next((k for h, k in _LINUX_SECTIONS.items() if line.startswith(h)), None)
        if section is not None:
            kind = section
            continue
        if kind is None:
            raise ValueError(f"ipcs line {lineno} outside any section: {raw!r}")
        if line.startswith("key "):  # the column header
            continue
        fields = line.split()
        try:
            # key msqid|shmid|semid owner perms ...
            key, ident, owner, perms = fields[0], fields[1], fields[2], fields[3]
            if not key.startswith("0x"):
                raise ValueError(key)
            messages = int(fields[5]) if kind == "queue" and len(fields) > 5 else None
            objects.append(
                IpcObject(kind, int(ident), int(key, 16), int(perms, 8), owner, messages)
            )
        except (IndexError, ValueError):
            raise ValueError(f"unparsable ipcs line {lineno}: {raw!r}") from None
    if kind is None:
        raise ValueError("no ipcs section header found")
    return objects


def _parse_bsd(text: str) -> list[IpcObject]:
    objects: list[IpcObject] = []
    seen_section = False
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("IPC status from"):
            continue
        if line in _BSD_SECTIONS:
            seen_section = True
            continue
        fields = line.split()
        if fields[:2] == ["T", "ID"]:  # the column header
            continue
        try:
            # T ID KEY MODE OWNER GROUP [more columns with -a]
            letter, ident, key, mode, owner = fields[0], fields[1], fields[2], fields[3], fields[4]
            if len(fields) < 6:
                raise ValueError(line)
            objects.append(
                IpcObject(
                    _BSD_LETTERS[letter],
                    int(ident),
                    _bsd_key(key),
                    mode_from_string(mode),
                    owner,
                )
            )
        except (IndexError, KeyError, ValueError):
            raise ValueError(f"unparsable ipcs line {lineno}: {raw!r}") from None
    if not seen_section:
        raise ValueError("no ipcs section header found")
    return objects


def _bsd_key(text: str) -> int:
    """Apple prints keys as ``0x%08x``; FreeBSD as a signed decimal int."""
    value = int(text, 16) if text.lower().startswith("0x") else int(text, 10)
    return value & 0xFFFFFFFF


_TRIPLET = re.compile(r"^[r-][wa-][ax-]$")


def mode_from_string(mode: str) -> int:
    """Turn a BSD mode string like ``--rw-r-----`` into permission bits.

    The first two characters are state flags (waiting reader/writer,
    removed segment) and carry no permission. In each triplet, Apple prints
    ``w`` (``a``, "alter", for semaphores) for the 2 bit and never the 1 bit;
    FreeBSD prints the 1 bit as ``a`` in the third place.
    """
    if len(mode) != 11:
        raise ValueError(f"mode string {mode!r} is not 11 characters")
    bits = 0
    for i in range(3):
        triplet = mode[2 + 3 * i : 5 + 3 * i]
        if not _TRIPLET.match(triplet):
            raise ValueError(f"bad permission triplet {triplet!r} in {mode!r}")
        value = (4 if triplet[0] == "r" else 0) | (2 if triplet[1] != "-" else 0)
        value |= 1 if triplet[2] != "-" else 0
        bits = (bits << 3) | value
    return bits


def ipcs_command(platform: str = sys.platform) -> tuple[list[str], str]:
    """The argv that lists every queue, segment and semaphore set, and its flavor.

    util-linux and Apple add up ``-q -m -s``; FreeBSD lets the last of them
    win, and its bare ``ipcs`` already lists all three kinds.
    """
    if platform.startswith("linux"):
        return ["ipcs", "-q", "-m", "-s"], "linux"
    if platform == "darwin":
        return ["ipcs", "-q", "-m", "-s"], "bsd"
    return ["ipcs"], "bsd"


def list_ipc_objects(timeout: float = 10.0) -> list[IpcObject]:
    """Every System V object the real ``ipcs`` shows to this process.

    The view is that of the caller's IPC namespace; a harness that runs the
    proxy in a namespace of its own passes its own lister to the snapshot.
    """
    argv, flavor = ipcs_command()
    return parse_ipcs(_run_tool(argv, timeout), flavor)


def queue_senders(timeout: float = 10.0) -> dict[int, int]:
    """Queue id -> pid of its last ``msgsnd`` (0: none yet), from util-linux ``ipcs -q -p``.

    Linux only (the BSD ``ipcs`` prints no such table); who fed a queue is how
    a test tells which process really sent a token.
    """
    senders: dict[int, int] = {}
    for lineno, raw in enumerate(_run_tool(["ipcs", "-q", "-p"], timeout).splitlines(), 1):
        fields = raw.split()
        if not fields or raw.startswith("------") or fields[0] == "msqid":
            continue
        try:
            senders[int(fields[0])] = int(fields[2])
        except (IndexError, ValueError):
            raise ValueError(f"unparsable ipcs -q -p line {lineno}: {raw!r}") from None
    return senders


def remove_ipc_object(obj: IpcObject, timeout: float = 10.0) -> None:
    """Remove an object with the real ``ipcrm``; one that is already gone is fine.

    Going through the tool rather than ``msgctl`` keeps one code path for the
    three kinds and matches what an operator would type.
    """
    argv = ["ipcrm", _IPCRM_FLAG[obj.kind], str(obj.id)]
    try:
        _run_tool(argv, timeout)
    except RuntimeError as exc:
        if any(marker in str(exc).lower() for marker in _ALREADY_GONE):
            return
        raise


def _run_tool(argv: list[str], timeout: float) -> str:
    """Run an IPC tool; every way it can fail becomes a one-line RuntimeError."""
    if shutil.which(argv[0]) is None:
        raise RuntimeError(
            f"{argv[0]} not found on PATH: install util-linux (Linux) to observe System V IPC"
        )
    cmd = " ".join(argv)
    try:
        # The C locale: util-linux translates its section headers and messages.
        env = {**os.environ, "LC_ALL": "C", "LANG": "C"}
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, env=env, check=False
        )
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"{cmd} did not finish within {timeout:g}s") from None
    if done.returncode != 0:
        detail = " ".join(done.stderr.split()) or f"exit status {done.returncode}"
        raise RuntimeError(f"{cmd} failed: {detail}")
    return done.stdout
