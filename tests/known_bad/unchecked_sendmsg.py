"""Defect: the result of ``sendmsg`` is never checked (PHP's ``@socket_sendmsg``).

Seed round 1 #3, round 2 #4, round 3 #4: a failed send is swallowed and the
index is returned as if the worker had the connection. Breaks FLT-01 (a failing
sendmsg is swallowed), FP-08 (the connection sent to a dead worker is lost)
and FP-09 (with no live worker, dispatch returns instead of raising).

FP-07 fails as well (after a worker is killed, the connections dispatched to
its dead channel are lost instead of reaching the survivors), and FLT-05
("no-lost-connections"). SP-18 and SP-19 are blocked by FLT-01: with every
sendmsg failing, dispatch succeeds all the same, so it raises no error whose
errno or message could be judged.
"""

from __future__ import annotations

import contextlib
import socket

from reference import MasterProxy

BREAKS = frozenset({"FP-07", "FP-08", "FP-09", "FLT-01", "FLT-05"})
BLOCKED = {"SP-18": "FLT-01", "SP-19": "FLT-01"}
SEED = "round 1 #3, round 2 #4, round 3 #4: @socket_sendmsg, result never checked"


class UncheckedSendProxy(MasterProxy):
    def _send_fd(self, chan: socket.socket, fd: int, tag: bytes) -> None:
        with contextlib.suppress(OSError):  # the defect: "@" for macOS compatibility
            super()._send_fd(chan, fd, tag)
