"""Defect: when ``open_channels`` fails midway, the pairs made so far stay open.

The queue is removed on the error path, but the channel ends created before
the failing ``socketpair`` are not closed. Breaks FLT-04 (a socketpair failure
leaks fds) and IPC-03 (a failure midway through ``open_channels`` keeps the
fds acquired so far). Seed round 3 follow-up: partial failure leaks the
earlier resources.
"""

from __future__ import annotations

import errno

from . import _channel as channel
from ._master import PinnedMasterProxy

BREAKS = frozenset({"FLT-04", "IPC-03"})
SEED = "round 3 follow-up: partial failure leaks earlier resources (no try/finally)"


class PairLeakProxy(PinnedMasterProxy):
    def __init__(self, host: str = "127.0.0.1") -> None:
        super().__init__(host)
        self._made: list[object] = []

    def open_channels(self, workers: int) -> None:
        if isinstance(workers, bool) or not isinstance(workers, int):
            raise TypeError(f"workers must be an int, got {type(workers).__name__}")
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self._require_master("open_channels")
        if self._queue is None:
            raise OSError(errno.EINVAL, "open_channels: call create_socket() first")
        if self._master_ends:
            raise OSError(errno.EINVAL, "open_channels: channels are already open")
        pairs = []
        for i in range(workers):
            try:
                pairs.append(channel.channel_pair())
            except OSError as exc:
                self._made.extend(pairs)  # the defect: kept, never closed
                self._queue.remove()
                self._queue = None
                self._queue_alive = False
                raise OSError(
                    exc.errno, f"open_channels: socketpair for worker {i} failed: {exc.strerror}"
                ) from exc
        self._master_ends = [m for m, _ in pairs]
        self._worker_ends = [w for _, w in pairs]
