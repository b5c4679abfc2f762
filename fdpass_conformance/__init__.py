"""fdpass-conformance: conformance suites, fixtures and fault injection for fd-passing proxies."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .contract import FdPassingProxy, ProtocolType, SocketProxy, check_impl

if TYPE_CHECKING:
    from .suites import ContractSuite

__all__ = ["ContractSuite", "FdPassingProxy", "ProtocolType", "SocketProxy", "check_impl"]


def __getattr__(name: str) -> Any:
    # The suites import pytest and the harness: load them only when asked for.
    if name == "ContractSuite":
        from .suites import ContractSuite

        return ContractSuite
    raise AttributeError(name)
