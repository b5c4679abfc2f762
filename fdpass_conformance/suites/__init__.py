"""The contract suites, one class per requirement class, and ``ContractSuite`` for all.

Downstream projects can run them inside their own test tree::

    from fdpass_conformance import ContractSuite

    class TestMyProxy(ContractSuite):
        factory = MyProxy
"""

from __future__ import annotations

from .test_flt import FaultSuite
from .test_fp import FdPassingSuite
from .test_ipc import IpcSuite
from .test_sp import SocketProxySuite
from .test_stateful import StatefulSuite


class ContractSuite(SocketProxySuite, FdPassingSuite, IpcSuite, FaultSuite, StatefulSuite):
    """Every requirement of the contract, against ``factory``."""


__all__ = [
    "ContractSuite",
    "FaultSuite",
    "FdPassingSuite",
    "IpcSuite",
    "SocketProxySuite",
    "StatefulSuite",
]
