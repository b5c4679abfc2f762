"""What an implementation is, observed once per factory and session.

FP requirements apply to proxies with ``dispatch``; IPC requirements to those
that create System V objects, which is observed through ``ipcs`` during one
full start-up rather than declared, so that a proxy cannot opt out by saying so.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..contract import is_fd_passing
from ..harness.server import ProxyServer, ServerOptions


@dataclass(frozen=True)
class Facts:
    fd_passing: bool
    supported: bool
    creates_ipc: bool | None  # None: the observation itself failed


_CACHE: dict[int, tuple[Callable[[], object], Facts]] = {}


def facts_for(factory: Callable[[], object]) -> Facts:
    cached = _CACHE.get(id(factory))
    if cached is not None and cached[0] is factory:
        return cached[1]
    probe = factory()
    try:
        fd_passing = is_fd_passing(probe)
        supported = bool(probe.is_supported())  # type: ignore[attr-defined]
    finally:
        close = getattr(probe, "close", None)
        if callable(close):
            close()
    facts = Facts(fd_passing, supported, _observe_ipc(factory) if supported else None)
    _CACHE[id(factory)] = (factory, facts)
    return facts


def _observe_ipc(factory: Callable[[], object]) -> bool | None:
    server = ProxyServer(factory, ServerOptions(workers=1))
    try:
        server.start()
        return bool(server.ipc_objects())
    except Exception:
        return None  # the suites will show what is wrong; applicability stays open
    finally:
        server.close()
