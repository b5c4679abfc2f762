"""Defect: ``open_channels`` does not validate the worker count.

``open_channels(0)`` and ``(-1)`` open no channel and return, ``(True)`` opens
one; only non-numbers fail, later, inside ``range``. Breaks FP-16 (SHOULD,
a warning).
"""

from __future__ import annotations

import errno
import socket

from . import _channel as channel
from ._master import PinnedMasterProxy

BREAKS = frozenset({"FP-16"})


class UncheckedCountProxy(PinnedMasterProxy):
    def open_channels(self, workers: int) -> None:
        # The defect: no isinstance(workers, int) check, no "at least 1" check.
        self._require_master("open_channels")
        if self._queue is None:
            raise OSError(errno.EINVAL, "open_channels: call create_socket() first")
        if self._master_ends:
            raise OSError(errno.EINVAL, "open_channels: channels are already open")
        masters: list[socket.socket | None] = []
        ends: list[socket.socket | None] = []
        try:
            for i in range(workers):
                try:
                    m, w = channel.channel_pair()
                except OSError as exc:
                    message = f"open_channels: socketpair for worker {i} failed: {exc.strerror}"
                    raise OSError(exc.errno, message) from exc
                masters.append(m)
                ends.append(w)
        except OSError:
            for sock in (*masters, *ends):
                if sock is not None:
                    sock.close()
            self._queue.remove()
            self._queue = None
            self._queue_alive = False
            raise
        self._master_ends, self._worker_ends = masters, ends
