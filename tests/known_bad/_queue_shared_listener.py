"""A correct shared-listener proxy that owns a System V message queue.

Workers accept from the inherited listener, as in ``ForkSharedProxy``; the
master also makes a private queue (mode 0600) in ``create_socket``, on which
each worker posts a best-effort "served" note after every accept (dropped when
the queue is full or gone). It removes the queue in ``close()``, only in the
process that made it.

So the IPC class applies to it, while nothing about ``dispatch`` does: IPC-07
must judge its own path (after ``ipcrm`` its workers keep accepting, no error
loop, ``close()`` succeeds) and IPC-08 (which holds up only ``dispatch``) is
n/a, never a harness ``AttributeError``. It is listed with the references,
which pass every requirement that applies.
"""

from __future__ import annotations

import errno
import socket

from fdpass_conformance.contract import ProtocolType
from fdpass_conformance.sysv import MessageQueue
from reference import ForkSharedProxy

#: The queue vanished (removed from outside): stop posting to it.
_GONE = frozenset({errno.EIDRM, errno.EINVAL})


class QueueOwningSharedProxy(ForkSharedProxy):
    def __init__(self, host: str = "127.0.0.1") -> None:
        super().__init__(host)
        self._queue: MessageQueue | None = None
        self._queue_gone = False

    def create_socket(
        self, port: int, protocol: ProtocolType | str = ProtocolType.TCP
    ) -> socket.socket:
        listener = super().create_socket(port, protocol)
        if self._queue is None:
            try:
                self._queue = MessageQueue(mode=0o600)
            except OSError as exc:
                self._listeners.remove(listener)
                listener.close()
                raise OSError(exc.errno, f"create_socket: {exc.strerror}") from exc
        return listener

    def accept(self, listener: socket.socket) -> socket.socket:
        conn = super().accept(listener)
        queue = self._queue
        if queue is not None and not self._queue_gone:
            try:
                queue.send(1, b"served", block=False)
            except BlockingIOError:
                pass  # full: the note is best effort
            except OSError as exc:
                if exc.errno not in _GONE:
                    conn.close()
                    raise
                self._queue_gone = True
        return conn

    def close(self) -> None:
        super().close()
        if self._queue is not None:
            self._queue.remove()  # a no-op outside the process that made it
            self._queue = None
