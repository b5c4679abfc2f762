"""Defect: each ``accept()`` in a worker makes a wake-up pipe and never closes it.

The pipe is meant to let a signal handler interrupt the wait; it is made anew
on every call and the previous one is dropped unclosed (two raw fds). Breaks
SP-16 (the worker's fd count grows by two per connection), and with it every
check that a worker's fds stay flat: FP-14 (the worker leaks while its fd
table is full and after), FLT-06 (the worker's fds are not back at baseline
after a doctored fd message) and FLT-05 (its "worker-fds-flat" invariant).

May break FP-10 (``MAY_BREAK``): FP-10 counts every process's fds around a
dispatch timeout, right after a request; when the worker reaches its next
``accept`` (and its next leaked pipe) only after the first count, FP-10 sees
the leak too. Whether it does is a race.
"""

from __future__ import annotations

import os
import socket

from reference import MasterProxy

BREAKS = frozenset({"SP-16", "FP-14", "FLT-06", "FLT-05"})
MAY_BREAK = frozenset({"FP-10"})


class WakeupPipeLeakProxy(MasterProxy):
    def __init__(self, host: str = "127.0.0.1") -> None:
        super().__init__(host)
        self._wakeup: tuple[int, int] | None = None

    def accept(self, listener: socket.socket) -> socket.socket:
        if self._chan is not None:
            self._wakeup = os.pipe()  # the defect: the previous pair is never closed
        return super().accept(listener)
