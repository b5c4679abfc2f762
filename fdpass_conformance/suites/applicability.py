"""What an implementation is and can do, observed once per factory and test process.

FP requirements apply to proxies with ``dispatch``; IPC requirements to those
that create System V objects, which is observed through ``ipcs`` during one
full start-up rather than declared, so that a proxy cannot opt out by saying so.

The same start-up establishes the prerequisites that many checks share: the
proxy can be constructed (SP-01 owns that) and it serves a connection end to
end (FP-02 for an fd-passing proxy, SP-09 for a shared listener). A check that
needs a prerequisite the proxy has shown it lacks is reported ``blocked`` by its
owner at once, instead of failing again, or waiting for its own timeout, on a
cause another requirement already names.

Every call into the implementation happens inside a ``ProxyServer``, so in the
isolation the suites use (its own IPC namespace, or the lock with a diff and
cleanup): a proxy that leaks from its constructor or ``is_supported()`` leaves
nothing on the host.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..harness.server import ProxyServer, Reply, ServerOptions, read_reply
from ..outcomes import blocked
from .evidence import describe_reply

#: Clients the probe connects at once before it concludes that the proxy serves nothing,
#: and how long they may take: generous, because a wrong "serves nothing" would block
#: many checks of a correct proxy on a loaded machine.
PROBE_TRIES = 2
PROBE_TIMEOUT = 5.0

#: The prerequisites, by name; a test needs one through ``@pytest.mark.fdpass_needs(name)``.
CONSTRUCTED = "constructed"
SERVED = "served"


@dataclass(frozen=True)
class Shortfall:
    """A prerequisite the implementation lacks: who owns it and what was seen."""

    owner: str
    why: str


@dataclass(frozen=True)
class Facts:
    fd_passing: bool
    supported: bool
    creates_ipc: bool | None  # None: the observation itself failed
    #: prerequisite name -> what is missing; absent names are met (or unknown).
    shortfalls: dict[str, Shortfall] = field(default_factory=dict)

    def serve_owner(self) -> str:
        return served_owner(self.fd_passing)


def served_owner(fd_passing: bool) -> str:
    """The requirement that owns "a connection is served end to end"."""
    return "FP-02" if fd_passing else "SP-09"


_CACHE: dict[int, tuple[Callable[[], object], Facts]] = {}


def facts_for(factory: Callable[[], object]) -> Facts:
    cached = _CACHE.get(id(factory))
    if cached is not None and cached[0] is factory:
        return cached[1]
    facts = _observe(factory)
    _CACHE[id(factory)] = (factory, facts)
    return facts


def _observe(factory: Callable[[], object]) -> Facts:
    server = ProxyServer(factory, ServerOptions(workers=2))
    try:
        try:
            server.start(upto="constructed")
        except Exception as exc:
            why = f"constructing the proxy failed: {type(exc).__name__}: {_line(exc)}"
            return Facts(False, True, None, {CONSTRUCTED: Shortfall("SP-01", why)})
        fd_passing = server.fd_passing
        try:
            supported = bool(server.call("is_supported"))
        except Exception:
            supported = True  # SP-02 judges is_supported(); the checks still run
        if not supported:
            return Facts(fd_passing, False, None)
        shortfalls: dict[str, Shortfall] = {}
        creates_ipc: bool | None = None
        try:
            server.create_socket()
            if fd_passing:
                server.call("open_channels", server.opts.workers)
            server.fork_workers()
            creates_ipc = bool(server.ipc_objects())
        except Exception as exc:
            why = f"starting a server with 2 workers failed: {type(exc).__name__}: {_line(exc)}"
            shortfalls[SERVED] = Shortfall(served_owner(fd_passing), why)
            return Facts(fd_passing, True, creates_ipc, shortfalls)
        unserved = _unserved(server)
        if unserved:
            shortfalls[SERVED] = Shortfall(served_owner(fd_passing), unserved)
        return Facts(fd_passing, True, creates_ipc, shortfalls)
    finally:
        server.close()


def _unserved(server: ProxyServer) -> str:
    """Empty if a connection was answered by a worker; otherwise what the clients saw.

    The clients connect at once and share one deadline, so a proxy that serves
    nothing costs PROBE_TIMEOUT once, not once per client.
    """
    clients = []
    try:
        for _ in range(PROBE_TRIES):
            try:
                clients.append(server.connect(PROBE_TIMEOUT))
            except OSError as exc:
                if not clients:
                    return f"a client could not connect: {type(exc).__name__}: {_line(exc)}"
        deadline = time.monotonic() + PROBE_TIMEOUT
        seen: list[Reply] = []
        for client in clients:
            reply = read_reply(client, b"probe", max(deadline - time.monotonic(), 0.01))
            if reply.answered:
                return ""
            seen.append(reply)
    finally:
        for client in clients:
            client.close()
    crash = server.crash_report(traceback=False)
    return (
        "no connection reached a worker: "
        + "; ".join(
            f"client {n + 1} {describe_reply(r, PROBE_TIMEOUT)}" for n, r in enumerate(seen)
        )
        + (f"; {crash}" if crash else "")
    )


def _line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else "(no message)"


def require_served(server: ProxyServer, reply: Reply, what: str, timeout: float = 5.0) -> Reply:
    """``reply`` must be answered for this check to mean anything; if it is not, the check
    is blocked by the requirement that owns serving, with what the client saw."""
    if not reply.answered:
        blocked(served_owner(server.fd_passing), f"{what} {describe_reply(reply, timeout)}")
    return reply


def served(
    server: ProxyServer, what: str, data: bytes = b"ping", timeout: float = 5.0, inst: int = 0
) -> Reply:
    """One request whose answer this check needs: blocked at once, without waiting for
    a client's timeout, when the proxy has already shown that it serves nothing."""
    assume_served(server)
    return require_served(server, server.request_reply(data, timeout, inst), what, timeout)


def served_each(server: ProxyServer, count: int, what: str, timeout: float = 5.0) -> list[Reply]:
    """``count`` requests whose answers this check needs, as :func:`served`; ``what``
    names each (``"connection {n}"``: ``{n}`` is the request's number)."""
    return [served(server, what.format(n=n), timeout=timeout) for n in range(count)]


def assume_served(server: ProxyServer) -> None:
    """Before a step whose meaning needs a served connection: blocked at once if the
    proxy has already shown that it serves nothing."""
    known = known_shortfall(server, SERVED)
    if known is not None:
        blocked(known.owner, known.why)


def traffic(server: ProxyServer, requests: int) -> None:
    """A few requests, so that objects a proxy makes lazily exist before evidence is read;
    none for a proxy known to serve nothing (its evidence is read without them)."""
    if known_shortfall(server, SERVED) is None:
        for _ in range(requests):
            server.request_reply()


def known_shortfall(server: ProxyServer, name: str) -> Shortfall | None:
    """What the implementation of ``server`` has shown it lacks, if it was observed."""
    cached = _CACHE.get(id(server.factory))
    if cached is None or cached[0] is not server.factory:
        return None
    return cached[1].shortfalls.get(name)
