"""The backend of an implementation, chosen once per server from its factory.

A factory type that runs its implementation elsewhere registers its backend with
``backend_for.register`` (the exec adapter does, for ``ExecFactory``); every other
factory (a class, a function) gets the in-process backend.
"""

from __future__ import annotations

import functools

from .inprocess import InProcessBackend
from .protocol import Backend


@functools.singledispatch
def backend_for(factory: object) -> Backend:
    """The backend for the implementations ``factory`` makes."""
    return InProcessBackend()


__all__ = ["Backend", "InProcessBackend", "backend_for"]
