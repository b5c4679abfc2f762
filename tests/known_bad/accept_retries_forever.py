"""Defect: ``accept()`` retries every ``OSError``, treating all of them as transient.

Breaks SP-14: on a closed listener ``accept`` never returns (EBADF forever),
so a shutdown that closes the listener under a blocked worker hangs.
"""

from __future__ import annotations

import socket
import time

from reference import ForkSharedProxy

BREAKS = frozenset({"SP-14"})


class StubbornAcceptProxy(ForkSharedProxy):
    def accept(self, listener: socket.socket) -> socket.socket:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                time.sleep(0.05)  # the defect: "EMFILE and ECONNABORTED are transient"
                continue
            return conn
