"""Defect: an fd-passing proxy (it has ``dispatch``) without ``enter_worker()``.

Breaks FP-01 at configure time: ``--fdpass-impl`` refuses the factory with exit
code 4 and one line naming the missing method. Workers of such a proxy would
keep every inherited channel end, which no later requirement could explain.
"""

from __future__ import annotations

import socket

from fdpass_conformance.contract import ProtocolType
from reference import MasterProxy

BREAKS = frozenset({"FP-01"})
REJECTED = "missing method enter_worker()"


class NoEnterWorkerProxy:
    """Delegates to MasterProxy; the worker-side entry point was never written."""

    def __init__(self) -> None:
        self._inner = MasterProxy()

    def is_supported(self) -> bool:
        return self._inner.is_supported()

    def create_socket(
        self, port: int, protocol: ProtocolType | str = ProtocolType.TCP
    ) -> socket.socket:
        return self._inner.create_socket(port, protocol)

    def accept(self, listener: socket.socket) -> socket.socket:
        return self._inner.accept(listener)

    def close(self) -> None:
        self._inner.close()

    def open_channels(self, workers: int) -> None:
        self._inner.open_channels(workers)

    def dispatch(self, listener: socket.socket, timeout: float | None = None) -> int:
        return self._inner.dispatch(listener, timeout)
