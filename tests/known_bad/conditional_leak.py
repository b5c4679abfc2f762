"""Defect: a connection re-routed away from a dead worker is leaked by the master.

When ``sendmsg`` to the chosen worker fails because that worker process is
really gone (its channel reports a hang-up, as after a SIGKILL while its idle
token was still queued) and ``dispatch`` then hands the connection to another
worker, the master keeps a ``dup()`` of it "for a retry" and never closes it:
one fd more in the master, and a client that is answered but never sees EOF.

Breaks FLT-05 only. Every single-fault check passes it: FP-08 kills a worker
and checks that the next requests are answered by the other (they are); FP-09
kills every worker, so nothing is re-routed and nothing leaks; FLT-01 injects
EPIPE into ``sendmsg``, but the worker behind it is alive, so its channel
reports no hang-up. Only the interleaving "kill a worker, then a request the
master first tries to send to it" shows the leak; the stateful test finds it
and shrinks it to start, kill_worker, request.
"""

from __future__ import annotations

import os
import select
from typing import Any

from reference import MasterProxy

BREAKS = frozenset({"FLT-05"})


class ConditionalLeakProxy(MasterProxy):
    """``MasterProxy`` with the seeded bug: a dup per re-route from a dead worker, never closed."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        super().__init__(host)
        self._retry_copies: list[int] = []  # the defect: nothing ever closes these

    def _hand_over(self, fd: int, *args: Any, **kwargs: Any) -> int:
        dead_before = set(self._dead)
        index = super()._hand_over(fd, *args, **kwargs)
        if any(self._hung_up(i) for i in self._dead - dead_before):
            self._retry_copies.append(os.dup(fd))  # re-routed from a dead worker: "kept"
        return index

    def _hung_up(self, index: int) -> bool:
        """Whether worker ``index``'s channel reports that the worker end is closed."""
        chan = self._master_ends[index]
        if chan is None:
            return False
        poller = select.poll()
        poller.register(chan.fileno(), select.POLLHUP)
        return any(event & select.POLLHUP for _fd, event in poller.poll(0))
