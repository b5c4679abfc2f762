"""Defect: the factory hands out one shared proxy instead of a new one per call.

Breaks SP-01: two factory calls in one process return the same object, so two
servers in one process would share listeners (and, for an fd-passing proxy,
channels and queue). The base is ``ForkSharedProxy``, whose single instance
otherwise serves correctly, so nothing else fails.
"""

from __future__ import annotations

from reference import ForkSharedProxy

BREAKS = frozenset({"SP-01"})
IMPL = "shared_proxy"


class SingletonProxy(ForkSharedProxy):
    """A ForkSharedProxy; the defect is in the factory below."""


_INSTANCE: SingletonProxy | None = None


def shared_proxy() -> SingletonProxy:
    """The defect: a module-level singleton, "to save resources"."""
    global _INSTANCE
    if _INSTANCE is None:
        _INSTANCE = SingletonProxy()
    return _INSTANCE
