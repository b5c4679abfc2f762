"""Defect: ``enter_worker`` keeps the master-side channel ends it inherited.

Breaks FP-06 (each worker holds master-side ends) and FP-11: every worker
holds its own channel's master end, so when the master closes, the worker's
end never sees EOF and ``accept`` blocks forever instead of raising
``EOFError``.

FLT-05 fails as well: its teardown invariant requires every worker to leave
on its own after the master's ``close()``.
"""

from __future__ import annotations

import socket

from reference import MasterProxy

BREAKS = frozenset({"FP-06", "FP-11", "FLT-05"})


class KeepsMasterEndsProxy(MasterProxy):
    _kept: list[socket.socket | None]

    def enter_worker(self, index: int) -> None:
        masters = self._master_ends
        self._master_ends = []  # hidden from the reference, which would close them
        super().enter_worker(index)
        self._kept = masters  # the defect: "the worker might need to talk back"
