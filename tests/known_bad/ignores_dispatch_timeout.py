"""Defect: ``dispatch`` ignores its timeout and blocks in ``accept``.

Breaks FP-10 (no ``TimeoutError`` without a client: the call never returns,
which the harness reports at its own deadline) and FLT-03 (the dispatch
timeout does not hold while signals arrive, for the same reason).
"""

from __future__ import annotations

import socket

from reference import MasterProxy

BREAKS = frozenset({"FP-10", "FLT-03"})


class NoTimeoutProxy(MasterProxy):
    def _accept_fd(self, listener: socket.socket, timeout: float | None) -> int:
        return super()._accept_fd(listener, None)  # the defect: the timeout is dropped
