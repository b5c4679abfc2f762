"""Defect: every failed ``sendmsg`` comes out of ``dispatch`` as ``OSError(EIO)``.

Otherwise correct: a dead worker's channel is skipped and the connection
re-routed, and with no worker left dispatch raises and closes the connection;
but whatever the kernel said (ENOBUFS, ETOOMANYREFS, EPIPE), the caller is told
EIO, as a C proxy does that answers ``-EIO`` for any failed send. Breaks SP-18
(``sendmsg`` failing with ENOBUFS surfaces with errno EIO) and FLT-01 (the
errno ``dispatch`` raises is not the injected one), and FLT-05, whose
dispatch-outcome invariant applies FLT-01's rule to the faults it injects.
"""

from __future__ import annotations

import errno
import os
import socket

from reference import MasterProxy, NoLiveWorkerError

BREAKS = frozenset({"SP-18", "FLT-01", "FLT-05"})


class SendErrorsAsEioProxy(MasterProxy):
    def dispatch(self, listener: socket.socket, timeout: float | None = None) -> int:
        try:
            return super().dispatch(listener, timeout)
        except TimeoutError:
            raise
        except OSError as exc:
            if isinstance(exc, NoLiveWorkerError) or "sendmsg" in str(exc):
                # The defect: one errno for every failed send, whatever the kernel said.
                raise OSError(
                    errno.EIO, f"dispatch: sendmsg failed: {os.strerror(errno.EIO)}"
                ) from None
            raise
