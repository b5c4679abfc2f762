"""The requirement catalogue as data: the machine-readable twin of ``docs/spec.md``.

Used by the plugin for ``--fdpass-list``, for the per-requirement report and to
validate requirement markers. ``tests/test_catalogue.py`` checks that every
entry here has a heading in ``docs/spec.md`` with the same ID, level, added
flag and title, and the other way round.

IDs and levels of the shared contract (SP-01..17, FP-01..14, IPC-01..09,
FLT-01..05) never change; entries with ``added=True`` go beyond it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

Level = Literal["MUST", "SHOULD"]
ReqClass = Literal["SP", "FP", "IPC", "FLT"]

#: Requirement classes in catalogue order, with what each covers.
CLASSES: tuple[ReqClass, ...] = ("SP", "FP", "IPC", "FLT")
CLASS_TITLES: dict[str, str] = {
    "SP": "every proxy",
    "FP": "fd-passing proxies",
    "IPC": "System V IPC objects, as ipcs shows them",
    "FLT": "faults on the data path",
}

#: The shape of a requirement ID: class, dash, two digits.
ID_PATTERN = re.compile(r"^(SP|FP|IPC|FLT)-(\d{2})$")


@dataclass(frozen=True)
class Requirement:
    """One requirement: ``cls`` is the prefix of ``id``; ``added`` marks additions."""

    id: str
    level: Level
    cls: ReqClass
    title: str  # one line
    added: bool  # beyond the shared contract

    @property
    def number(self) -> int:
        """The numeric part of the ID (``FP-07`` -> 7)."""
        return int(self.id.rsplit("-", 1)[1])

    @property
    def must(self) -> bool:
        return self.level == "MUST"


_CLASS_OF: dict[str, ReqClass] = {"SP": "SP", "FP": "FP", "IPC": "IPC", "FLT": "FLT"}


def _r(req_id: str, level: Level, title: str, *, added: bool = False) -> Requirement:
    match = ID_PATTERN.match(req_id)
    if match is None:
        raise ValueError(f"malformed requirement ID {req_id!r}")
    return Requirement(
        id=req_id, level=level, cls=_CLASS_OF[match.group(1)], title=title, added=added
    )


REQUIREMENTS: tuple[Requirement, ...] = (
    # SP: every proxy
    _r("SP-01", "MUST", "Factory returns a fresh object with all four methods, missing ones named"),
    _r("SP-02", "MUST", "is_supported() is a stable bool and leaves nothing behind"),
    _r(
        "SP-03",
        "MUST",
        "create_socket(0) gives a listening, blocking, non-inheritable IPv4 stream socket"
        " on 127.0.0.1",
    ),
    _r("SP-04", "MUST", "An explicit free port is honoured"),
    _r("SP-05", "MUST", "The listener has SO_REUSEADDR"),
    _r(
        "SP-06",
        "MUST",
        "All three protocols get a stream listener; unknown ones are rejected with ValueError,"
        " leaking nothing",
    ),
    _r(
        "SP-07",
        "MUST",
        "An invalid port raises ValueError/TypeError/OverflowError, leaking nothing",
    ),
    _r("SP-08", "MUST", "A port in use raises OSError(EADDRINUSE), leaking nothing"),
    _r("SP-09", "MUST", "Data flows both ways and the peer address is the client's"),
    _r("SP-10", "MUST", "Connections are served by workers, never by the master"),
    _r("SP-11", "MUST", "When the worker closes, the client sees EOF"),
    _r("SP-12", "MUST", "close() is idempotent, releases everything and frees the port"),
    _r("SP-13", "SHOULD", "Sequential load reaches every worker"),
    _r("SP-14", "MUST", "A closed listener makes accept() fail fast with OSError"),
    _r("SP-15", "MUST", "A SO_REUSEPORT listener lets a second instance bind the same port"),
    _r("SP-16", "MUST", "200 sequential connections keep every fd count flat"),
    _r("SP-17", "SHOULD", "64 concurrent clients are all served in time"),
    _r("SP-18", "MUST", "OSErrors carry the errno of the call that failed", added=True),
    _r("SP-19", "SHOULD", "Error messages name the failing step", added=True),
    _r(
        "SP-20",
        "MUST",
        "Sockets returned by accept() are blocking and non-inheritable",
        added=True,
    ),
    _r(
        "SP-21",
        "MUST",
        "An exec program's master reaps its workers",
        added=True,
    ),
    # FP: fd-passing proxies
    _r("FP-01", "MUST", "open_channels, enter_worker and dispatch all exist once dispatch does"),
    _r("FP-02", "MUST", "The worker gets the very connection the master accepted"),
    _r("FP-03", "MUST", "The master keeps no fd of a dispatched connection"),
    _r(
        "FP-04",
        "MUST",
        "dispatch() returns the index of the worker that received the connection",
    ),
    _r("FP-05", "MUST", "Received sockets are close-on-exec"),
    _r(
        "FP-06",
        "MUST",
        "Channel ends are split: each worker holds only its own, the master no worker end",
    ),
    _r(
        "FP-07",
        "MUST",
        "A worker's exit or death leaves the master's IPC objects and the other workers intact",
    ),
    _r(
        "FP-08",
        "MUST",
        "A dead worker costs neither the master's life nor the connection",
    ),
    _r(
        "FP-09",
        "MUST",
        "With no live worker, dispatch raises OSError in time and the client is not left hanging",
    ),
    _r(
        "FP-10",
        "MUST",
        "dispatch(timeout) without a client raises TimeoutError on time, leaking nothing",
    ),
    _r(
        "FP-11",
        "MUST",
        "After the master's close(), a blocked worker accept() raises EOFError within 1 s",
    ),
    _r("FP-12", "SHOULD", "Idle workers are preferred over busy ones"),
    _r("FP-13", "MUST", "Two instances in one process are isolated"),
    _r("FP-14", "MUST", "A worker with a full fd table fails accept() cleanly and recovers"),
    _r(
        "FP-15",
        "MUST",
        "Out-of-order calls raise a clear error instead of crashing or hanging",
        added=True,
    ),
    _r(
        "FP-16",
        "SHOULD",
        "Invalid worker counts and indexes are rejected up front",
        added=True,
    ),
    _r(
        "FP-17",
        "MUST",
        "After enter_worker, a worker holds no listener of the master's",
        added=True,
    ),
    # IPC: System V objects
    _r("IPC-01", "MUST", "is_supported() and construction create no IPC object"),
    _r("IPC-02", "MUST", "Closing the master removes every IPC object the proxy made"),
    _r(
        "IPC-03",
        "MUST",
        "A failure midway through setup releases every IPC object and fd acquired so far",
    ),
    _r(
        "IPC-04",
        "MUST",
        "Each instance gets its own IPC objects, not ones keyed by a shared ftok(path)",
    ),
    _r("IPC-05", "MUST", "IPC objects grant nothing to group or others"),
    _r(
        "IPC-06",
        "MUST",
        "msgget failing with ENOSPC surfaces as OSError(ENOSPC), leaking nothing",
    ),
    _r(
        "IPC-07",
        "MUST",
        "A queue removed from outside causes prompt errors or continued service, never hangs",
    ),
    _r("IPC-08", "SHOULD", "A full queue never holds dispatch past its timeout"),
    _r(
        "IPC-09",
        "MUST",
        "After workers are SIGKILLed, the master's close() still leaves no IPC object",
    ),
    _r(
        "IPC-10",
        "MUST",
        "Only the creating master removes or alters its IPC objects",
        added=True,
    ),
    # FLT: faults on the data path
    _r("FLT-01", "MUST", "A failing sendmsg is never swallowed"),
    _r(
        "FLT-02",
        "MUST",
        "EMFILE from the master's accept surfaces from dispatch, which recovers",
    ),
    _r("FLT-03", "MUST", "Signals (EINTR) do not break a blocking accept or dispatch"),
    _r(
        "FLT-04",
        "MUST",
        "A socketpair failure (EMFILE) during setup raises OSError, leaking nothing",
    ),
    _r(
        "FLT-05",
        "MUST",
        "Random interleavings of traffic, kills and faults keep every invariant",
    ),
    _r(
        "FLT-06",
        "MUST",
        "A truncated or oversized fd message leaks no descriptor",
        added=True,
    ),
)

BY_ID: dict[str, Requirement] = {req.id: req for req in REQUIREMENTS}

#: Requirements outside the FP class that only make sense for a proxy with
#: ``dispatch`` (they fault the master's accept/send or the worker's receive, or
#: fill the queue only dispatch could wait on).
FD_PASSING_ONLY: frozenset[str] = frozenset({"FLT-01", "FLT-02", "FLT-06", "IPC-08"})


def select(prefixes: Sequence[str]) -> list[Requirement]:
    """Requirements whose ID starts with any of ``prefixes``, in catalogue order.

    Matching ignores case and surrounding blanks, and an entry may hold several
    comma-separated prefixes (``"FP,IPC-0"``), so a command-line value can be
    passed through unchanged. No prefixes at all selects the whole catalogue.
    A prefix that matches no requirement raises ``ValueError`` naming it, so a
    typo is reported instead of selecting nothing.
    """
    items = [prefixes] if isinstance(prefixes, str) else list(prefixes)
    wanted = [p.strip().upper() for item in items for p in item.split(",") if p.strip()]
    if not wanted:
        return list(REQUIREMENTS)
    unknown = [p for p in wanted if not any(r.id.startswith(p) for r in REQUIREMENTS)]
    if unknown:
        raise ValueError(
            "no requirement ID starts with "
            + ", ".join(repr(p) for p in unknown)
            + f"; known classes: {', '.join(CLASSES)}"
        )
    return [r for r in REQUIREMENTS if any(r.id.startswith(p) for p in wanted)]


def applicable_classes(fd_passing: bool, creates_ipc: bool | None) -> set[str]:
    """The requirement classes that apply to a proxy; the others are reported n-a.

    SP and FLT always apply (single FLT requirements may still be n-a, see
    ``applicable``). FP applies to fd-passing proxies (those with ``dispatch``).
    IPC applies unless the proxy is known to create no System V object:
    ``creates_ipc=None`` means "not observed yet", and keeps IPC so that the
    checks run and observe it.
    """
    classes = {"SP", "FLT"}
    if fd_passing:
        classes.add("FP")
    if creates_ipc is not False:
        classes.add("IPC")
    return classes


def applicable(req: Requirement, fd_passing: bool, creates_ipc: bool | None) -> bool:
    """Whether one requirement applies: its class applies, and it needs no missing dispatch."""
    if req.cls not in applicable_classes(fd_passing, creates_ipc):
        return False
    return fd_passing or req.id not in FD_PASSING_ONLY
