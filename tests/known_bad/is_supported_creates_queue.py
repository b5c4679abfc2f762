"""Defect: ``is_supported()`` probes System V queues by creating the proxy's queue.

Breaks SP-02 (an IPC object survives the call) and IPC-01 (``is_supported()``
creates an IPC object). The queue is kept for ``create_socket`` and removed by
``close()``, so nothing leaks once the proxy is closed; only the probe is impure.
Seed: pull request, ``isSupported()`` should mean "works here" (SP-02).
"""

from __future__ import annotations

from reference import MasterProxy

BREAKS = frozenset({"SP-02", "IPC-01"})
SEED = "pull request: isSupported() (SP-02)"


class QueueProbeProxy(MasterProxy):
    def is_supported(self) -> bool:
        if not super().is_supported():
            return False
        if self._queue is None:
            # The defect: "check that msgget works" by making the real queue now.
            self._queue = self._create_queue()
        return True
