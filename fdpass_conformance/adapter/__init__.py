"""The exec adapter: an implementation in any language, run as a program.

``--fdpass-impl=exec:COMMAND ARGS...`` starts COMMAND as a separate program
that speaks the adapter protocol (docs/adapter.md) over a Unix socket, and
turns it into a proxy that satisfies the contract, so that every suite,
fault and report applies unchanged. In a test tree::

    from fdpass_conformance.adapter import exec_impl

    class TestMyProgram(ContractSuite):
        factory = exec_impl("./build/masterproxy")
"""

from __future__ import annotations

from .backend import ExecBackend  # also registers it as the backend of ExecFactory
from .program import DEFAULT_DEADLINE, ENV_DEADLINE, Hello
from .proxy import ExecFactory, ExecFdPassingProxy, ExecProxy, RemoteSocket, exec_impl
from .wire import (
    ENV_PROTOCOL,
    ENV_SOCKET,
    PROTOCOL,
    PROTOCOLS,
    ProgramDefect,
    ProgramError,
    UnsupportedMethod,
)

__all__ = [
    "DEFAULT_DEADLINE",
    "ENV_DEADLINE",
    "ENV_PROTOCOL",
    "ENV_SOCKET",
    "PROTOCOL",
    "PROTOCOLS",
    "ExecBackend",
    "ExecFactory",
    "ExecFdPassingProxy",
    "ExecProxy",
    "Hello",
    "ProgramDefect",
    "ProgramError",
    "RemoteSocket",
    "UnsupportedMethod",
    "exec_impl",
]
