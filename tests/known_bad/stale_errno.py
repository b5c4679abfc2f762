"""Defect: a failed ``socketpair`` is reported with the errno of an earlier call.

Seed round 2 #1 and #6: after ``stream_socket_pair()`` failed, the code asked
``socket_last_error()``, the last error of another extension, and reported a
bogus error. The Python twin: ``ctypes.get_errno()``, the errno saved by the
last *ctypes* call (the queue's ``msgget``), instead of the ``OSError`` that
``socket.socketpair`` raised. Breaks SP-18 (errno of the wrong call) and
FLT-04 (``EMFILE`` from socketpair does not surface as ``EMFILE``).
"""

from __future__ import annotations

import ctypes
import os

from reference import MasterProxy

BREAKS = frozenset({"SP-18", "FLT-04"})
SEED = "round 2 #1, #6: socket_last_error() after stream_socket_pair() failed"


class StaleErrnoProxy(MasterProxy):
    def open_channels(self, workers: int) -> None:
        try:
            super().open_channels(workers)
        except OSError as exc:
            if "socketpair" not in str(exc):
                raise
            code = ctypes.get_errno()  # the defect: the last ctypes call's errno
            raise OSError(code, f"open_channels: socketpair failed: {os.strerror(code)}") from None
