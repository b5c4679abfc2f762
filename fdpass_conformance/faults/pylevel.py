"""Python-level fault injection: make the Nth call of a Python callable raise OSError.

Why this layer: on macOS (no strace, no prlimit on other processes) and for
Python implementations in the pytest process itself, the only portable way
to make ``sendmsg`` fail with ENOBUFS or ``msgget`` with ENOSPC is to wrap
the callable. :class:`PatchedErrno` wraps it at its *defining* object: the
class attribute for methods (``socket.socket.sendmsg``), the module
attribute for functions (``socket.socketpair``,
``fdpass_conformance.sysv.msgget``).

Limitations, by construction:

* Code that did ``from socket import socketpair`` (or ``from ...sysv import
  msgget``) holds its own binding, which the patch does not see; patch the
  name in *that* module instead (``"theirmodule.socketpair"``).
* Methods of C types (``_socket.socket``) cannot be patched: patch the
  Python subclass (``socket.socket.sendmsg``), which every ``socket.socket``
  instance goes through. The patch is inherited by subclasses of the class.
* The patch lives in this process; a child forked while it is active
  inherits it with the counters as they were at ``fork`` and counts on its
  own. A process that ``exec``s (PHP, C) is unaffected: use the syscall layer.

Counting is exact under threads (a lock): calls ``after+1 .. after+times``
raise ``OSError(errno, strerror)``, which Python turns into the matching
subclass (``BrokenPipeError`` for EPIPE, ``BlockingIOError`` for EAGAIN);
``times=None`` raises on every call from ``after+1`` on. Other calls go to
the original.

An injected result is one the kernel could have returned to that very call
(docs/faults.md reviews each fault the suites inject): the failing call does
nothing, as a failed system call does; EPIPE from a send without
``MSG_NOSIGNAL`` on Linux also raises ``SIGPIPE`` in the process, as the kernel
does (fatal at ``SIG_DFL``, nothing under Python's default ``SIG_IGN``); and
EINTR is refused, because CPython retries an interrupted call itself (PEP 475),
so Python code never sees it: interrupt with a real signal instead.
"""

from __future__ import annotations

import errno
import functools
import importlib
import inspect
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable
from types import ModuleType
from typing import Any

from fdpass_conformance.faults.errors import errno_name, parse_errno

#: Send calls whose EPIPE comes with SIGPIPE unless MSG_NOSIGNAL is in their flags: the
#: position of ``flags`` among the wrapper's arguments (``self`` first), or None where the
#: flags never reach the kernel (``socket.send_fds`` drops them: facts.md, gh-107898).
_SENDS: dict[str, int | None] = {"sendmsg": 3, "send": 2, "sendall": 2, "send_fds": None}
_NOSIGNAL: int = getattr(socket, "MSG_NOSIGNAL", 0)


def available() -> tuple[bool, str]:
    """Always (True, ""): wrapping a Python callable works on every platform."""
    return True, ""


def resolve(target: str) -> tuple[ModuleType | type, str]:
    """Split ``"pkg.mod.Class.attr"`` into (the object that holds ``attr``, ``"attr"``).

    The longest importable module prefix is imported; the rest are attributes.
    """
    parts = target.split(".")
    if len(parts) < 2 or not all(part.isidentifier() for part in parts):
        raise ValueError(f"target must be a dotted path like 'socket.socketpair', got {target!r}")
    module: ModuleType | None = None
    index = len(parts) - 1
    while index > 0:
        try:
            module = importlib.import_module(".".join(parts[:index]))
            break
        except ModuleNotFoundError:
            index -= 1
    if module is None:
        raise ValueError(f"no importable module in {target!r}")
    owner: Any = module
    for name in parts[index:-1]:
        try:
            owner = getattr(owner, name)
        except AttributeError:
            raise ValueError(f"{target!r}: {owner!r} has no attribute {name!r}") from None
    if not isinstance(owner, (ModuleType, type)):
        raise ValueError(f"{target!r}: can patch attributes of modules and classes only")
    return owner, parts[-1]


class PatchedErrno:
    """Make calls ``after+1 .. after+times`` of ``target`` raise ``OSError(error)``.

    ``calls`` counts every call while active, ``injected`` the ones that
    raised. Use as a context manager or with :meth:`start`/:meth:`stop`;
    patches of one attribute must be stopped in reverse order of starting.
    """

    def __init__(
        self, target: str, error: str | int, after: int = 0, times: int | None = 1
    ) -> None:
        self.errno = parse_errno(error)
        if self.errno == errno.EINTR:
            raise ValueError(
                "EINTR never reaches Python code (CPython retries an interrupted call, "
                "PEP 475): deliver a real signal instead (faults.kernel)"
            )
        if isinstance(after, bool) or not isinstance(after, int) or after < 0:
            raise ValueError(f"after must be an int >= 0, got {after!r}")
        if times is not None and (isinstance(times, bool) or not isinstance(times, int)):
            raise ValueError(f"times must be an int >= 1 or None, got {times!r}")
        if times is not None and times < 1:
            raise ValueError(f"times must be an int >= 1 or None, got {times!r}")
        self.target = target
        self.after = after
        self.times = times
        self.calls = 0
        self.injected = 0
        self._lock = threading.Lock()
        self._owner: ModuleType | type | None = None
        self._attr = ""
        self._original: Any = None
        self._had_own = False
        self._installed: Any = None

    @property
    def active(self) -> bool:
        return self._owner is not None

    def _should_fail(self) -> bool:
        with self._lock:
            self.calls += 1
            fail = self.calls > self.after and (
                self.times is None or self.calls <= self.after + self.times
            )
            if fail:
                self.injected += 1
            return fail

    def _sigpipe(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
        """Whether the kernel would also send SIGPIPE with this call's EPIPE (Linux)."""
        if self.errno != errno.EPIPE or not sys.platform.startswith("linux"):
            return False
        if self._attr not in _SENDS:
            return False
        at = _SENDS[self._attr]
        if at is None:
            return True
        flags = kwargs.get("flags", args[at] if len(args) > at else 0)
        return not (isinstance(flags, int) and flags & _NOSIGNAL)

    def _raise(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if self._sigpipe(args, kwargs):
            signal.raise_signal(signal.SIGPIPE)  # what the kernel does to this sender
        raise OSError(self.errno, os.strerror(self.errno))

    def _make_wrapper(self, func: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if self._should_fail():
                self._raise(args, kwargs)
            return func(*args, **kwargs)

        return wrapper

    def start(self) -> PatchedErrno:
        """Install the wrapper; counters restart at zero."""
        if self.active:
            raise RuntimeError(f"{self.target} is already patched by this PatchedErrno")
        owner, attr = resolve(self.target)
        try:
            raw = inspect.getattr_static(owner, attr)
        except AttributeError:
            raise ValueError(f"{self.target!r} does not exist") from None
        if isinstance(raw, staticmethod):
            installed: Any = staticmethod(self._make_wrapper(raw.__func__))
        elif isinstance(raw, classmethod):
            installed = classmethod(self._make_wrapper(raw.__func__))
        elif callable(raw):
            installed = self._make_wrapper(raw)
        else:
            raise ValueError(f"{self.target!r} is not callable")
        had_own = attr in vars(owner)
        try:
            setattr(owner, attr, installed)
        except (TypeError, AttributeError) as exc:
            raise TypeError(
                f"cannot patch {self.target}: {exc} (patch a Python subclass or module instead)"
            ) from None
        with self._lock:
            self.calls = 0
            self.injected = 0
        self._owner, self._attr, self._original = owner, attr, raw
        self._had_own, self._installed = had_own, installed
        return self

    def stop(self) -> None:
        """Put the original back; idempotent. Counters keep their values."""
        owner = self._owner
        if owner is None:
            return
        current = inspect.getattr_static(owner, self._attr, None)
        if current is not self._installed:
            raise RuntimeError(
                f"{self.target} was re-patched after this PatchedErrno; "
                "stop patches in reverse order"
            )
        if self._had_own:
            setattr(owner, self._attr, self._original)
        else:
            delattr(owner, self._attr)
        self._owner = None
        self._installed = None
        self._original = None

    def __enter__(self) -> PatchedErrno:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        times = "all" if self.times is None else self.times
        return (
            f"PatchedErrno({self.target}, {errno_name(self.errno)}, after={self.after}, "
            f"times={times}, calls={self.calls}, injected={self.injected})"
        )
