"""Defect: the master's ``accept`` errors are swallowed and retried until the deadline.

With the master's fd table full, ``dispatch`` retries ``accept`` (EMFILE) until
its timeout and then raises ``TimeoutError`` (errno ETIMEDOUT), hiding the
cause. Breaks FLT-02 (EMFILE does not surface from dispatch).
"""

from __future__ import annotations

import errno
import socket
import time

from reference import MasterProxy

BREAKS = frozenset({"FLT-02"})


class SwallowAcceptErrorProxy(MasterProxy):
    def _accept_fd(self, listener: socket.socket, timeout: float | None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            try:
                return super()._accept_fd(listener, remaining)
            except TimeoutError:
                raise
            except OSError:
                pass  # the defect: "accept errors are transient"
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(errno.ETIMEDOUT, f"dispatch: no connection within {timeout}s")
            time.sleep(0.01)
