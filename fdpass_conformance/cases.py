"""The cases each requirement sends, as data: one table for the suites and for ``docs/spec.md``.

A case that the spec promises and no test sends is a false pass waiting to
happen (an author reads "``"gopher"`` is rejected" and believes it was
checked). So the suites parametrize from these tables, and each requirement
section of ``docs/spec.md`` that has cases lists them in a ``- **Cases**:``
bullet, whose backticked items ``tests/test_cases.py`` compares with
:data:`SPEC_CASES`: a case added on one side only fails that test.

Each case has the label the spec shows (``2**40``, ``bind: EACCES``) and the
value the test sends.
"""

from __future__ import annotations

from dataclasses import dataclass

from .contract import ProtocolType
from .harness.childcalls import LISTENER_ARG as LISTENER_ARG  # the listener, in arguments


@dataclass(frozen=True)
class Case:
    """One input a check sends: ``label`` as the spec writes it, ``value`` as sent."""

    label: str
    value: object

    @property
    def id(self) -> str:
        """The label as a pytest id: no double quotes or spaces to quote on a command line."""
        return self.label.replace('"', "'").replace(" ", "_")


@dataclass(frozen=True)
class Fault:
    """A system call failed with an errno: ``call`` as strace names it, ``error`` by name."""

    call: str
    error: str

    @property
    def label(self) -> str:
        return f"{self.call}: {self.error}"

    @property
    def id(self) -> str:
        return f"{self.call}-{self.error}"


def _str(value: str) -> Case:
    return Case(f'"{value}"', value)


# -- SP-06: protocols -----------------------------------------------------------

#: Accepted, each giving a stream listener: the members and the plain strings.
PROTOCOLS: tuple[Case, ...] = (
    *(Case(p.name, p) for p in ProtocolType),
    *(_str(p.value) for p in ProtocolType),
)
#: Rejected with ValueError, leaking nothing.
BAD_PROTOCOLS: tuple[Case, ...] = tuple(_str(p) for p in ("udp", "sctp", "", "TCP ", "gopher"))

# -- SP-07: ports ---------------------------------------------------------------

#: Rejected with ValueError, TypeError or OverflowError, leaking nothing.
BAD_PORTS: tuple[Case, ...] = (
    Case("-1", -1),
    Case("65536", 65536),
    Case("70000", 70000),
    Case("2**40", 2**40),
    _str("80"),
    Case("80.0", 80.0),
    Case("1.5", 1.5),
    Case("None", None),
)

# -- SP-18, SP-19: errno and message of a failed call ------------------------------

#: Calls failed during setup (create_socket, then open_channels), each with an errno
#: the kernel can return for that call but that it does not return here on its own.
SETUP_FAULTS: tuple[Fault, ...] = (
    Fault("socket", "EMFILE"),
    Fault("setsockopt", "EPERM"),  # an LSM or a cgroup BPF sockopt program refuses
    Fault("bind", "EACCES"),
    Fault("listen", "EADDRINUSE"),
    Fault("socketpair", "ENFILE"),
    Fault("msgget", "ENOSPC"),
)
#: Calls failed inside dispatch (every call, so that no re-routing can hide the error).
DISPATCH_FAULTS: tuple[Fault, ...] = (Fault("sendmsg", "ENOBUFS"),)

#: Words that name a step in an error message, in the languages proxies are written in;
#: matched case-insensitively, with ``_``, ``-``, ``:``, ``.`` and spaces ignored
#: (``socket_create_pair``, ``stream_socket_pair()``, "socket pair" all name socketpair).
STEP_NAMES: dict[str, tuple[str, ...]] = {
    "socket": ("socket",),
    "setsockopt": ("setsockopt", "setoption"),
    "bind": ("bind",),
    "listen": ("listen",),
    "socketpair": ("socketpair", "socketcreatepair", "unixstreampair"),
    "msgget": ("msgget", "queue"),
    "sendmsg": ("sendmsg",),
}


def names_step(message: str, call: str) -> bool:
    """Whether ``message`` names ``call`` by one of its :data:`STEP_NAMES`."""
    squeezed = "".join(ch for ch in message.lower() if ch not in "_-:. ()")
    return any(name in squeezed for name in STEP_NAMES.get(call, (call,)))


# -- FP-15: out-of-order calls ---------------------------------------------------


@dataclass(frozen=True)
class CallSequence:
    """Calls made in order: ``master`` in the server's master after stopping at ``upto``,
    then ``child`` (if any) in a process forked from it; the last call must be refused."""

    label: str
    upto: str
    master: tuple[tuple[str, tuple[object, ...]], ...]
    child: tuple[tuple[str, tuple[object, ...]], ...] = ()


OUT_OF_ORDER: tuple[CallSequence, ...] = (
    CallSequence(
        "dispatch before open_channels", "listening", (("dispatch", (LISTENER_ARG, 0.2)),)
    ),
    CallSequence("enter_worker before open_channels", "listening", (("enter_worker", (0,)),)),
    CallSequence("accept without enter_worker", "channels", (("accept", (LISTENER_ARG,)),)),
    CallSequence(
        "dispatch after close", "channels", (("close", ()), ("dispatch", (LISTENER_ARG, 0.2)))
    ),
    CallSequence(
        "enter_worker after close", "channels", (("close", ()),), (("enter_worker", (0,)),)
    ),
    CallSequence(
        "accept after close",
        "channels",
        (),
        (("enter_worker", (0,)), ("close", ()), ("accept", (LISTENER_ARG,))),
    ),
)

# -- FP-16: worker counts and indexes ----------------------------------------------

#: open_channels(n) arguments, rejected with ValueError or TypeError before anything is made.
BAD_WORKER_COUNTS: tuple[Case, ...] = (
    Case("0", 0),
    Case("-1", -1),
    _str("2"),
    Case("True", True),
    Case("1.5", 1.5),
)
#: Channels opened before enter_worker(i) is called with an index outside 0..n-1.
CHANNELS_FOR_INDEX = 2
#: enter_worker(i) arguments, in a forked child after open_channels(CHANNELS_FOR_INDEX).
BAD_WORKER_INDEXES: tuple[Case, ...] = (Case("n", CHANNELS_FOR_INDEX), Case("-1", -1))

# -- FLT-01: failing sendmsg ----------------------------------------------------------

#: Errors a real sendmsg of SCM_RIGHTS reports: no buffer, too many fds in flight, peer gone.
SENDMSG_ERRORS: tuple[str, ...] = ("ENOBUFS", "ETOOMANYREFS", "EPIPE")


# -- the spec's view ------------------------------------------------------------------

#: Requirement ID -> the labels its ``- **Cases**:`` bullet in docs/spec.md lists, in order.
SPEC_CASES: dict[str, tuple[str, ...]] = {
    "SP-06": tuple(c.label for c in (*PROTOCOLS, *BAD_PROTOCOLS)),
    "SP-07": tuple(c.label for c in BAD_PORTS),
    "SP-18": tuple(f.label for f in (*SETUP_FAULTS, *DISPATCH_FAULTS)),
    "SP-19": tuple(f.label for f in (*SETUP_FAULTS, *DISPATCH_FAULTS)),
    "FP-15": tuple(s.label for s in OUT_OF_ORDER),
    "FP-16": (
        *(f"open_channels({c.label})" for c in BAD_WORKER_COUNTS),
        *(f"enter_worker({c.label})" for c in BAD_WORKER_INDEXES),
    ),
    "FLT-01": SENDMSG_ERRORS,
}
