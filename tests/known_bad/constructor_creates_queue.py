"""Defect: the constructor creates the message queue.

Breaks IPC-01 (construction creates an IPC object; every caller that only
probes ``is_supported()`` makes one). ``close()`` still removes it. (With the
queue limit reached, construction itself fails with ENOSPC; IPC-06 then skips
with "precondition failed ... (IPC-01)" instead of blaming itself.)
"""

from __future__ import annotations

from reference import MasterProxy

BREAKS = frozenset({"IPC-01"})


class EagerQueueProxy(MasterProxy):
    def __init__(self, host: str = "127.0.0.1") -> None:
        super().__init__(host)
        self._queue = self._create_queue()  # the defect: made at construction
