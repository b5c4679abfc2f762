"""The idle-token queue: how a worker tells the master it is free, through System V IPC.

A token is (worker index, fds that worker had received when it went idle),
sent without blocking as one message of type ``TOKEN_MTYPE``; the master
takes them in FIFO order. The queue is only a preference: when it is full
a token is lost (the worker may be chosen round-robin instead, IPC-08), and
when it was removed from outside (``ipcrm``) both sides carry on without it
(IPC-07) rather than fail or retry.
"""

from __future__ import annotations

import errno
import struct

from fdpass_conformance.sysv import MessageQueue

#: An idle token's body.
TOKEN = struct.Struct("=iq")
#: The message type of every token: one FIFO.
TOKEN_MTYPE = 1
#: Receive room: one byte more than a token, so that a longer message is seen as foreign
#: instead of being cut (MSG_NOERROR) to a token's size and misread as one.
_ROOM = TOKEN.size + 1
#: The queue vanished under us (removed from outside): serve without tokens.
_QUEUE_GONE = frozenset({errno.EIDRM, errno.EINVAL})


class TokenQueue(MessageQueue):
    """A private queue of idle tokens; ``alive`` is False once it vanished from outside."""

    alive = True

    def take(self) -> tuple[int, int] | None:
        """The oldest token as (index, received); None if there is none, or no queue."""
        while self.alive:
            try:
                msg = self.receive(TOKEN_MTYPE, block=False, max_body=_ROOM)
            except OSError as exc:
                if exc.errno not in _QUEUE_GONE:
                    raise OSError(exc.errno, f"dispatch: msgrcv failed: {exc.strerror}") from exc
                self.alive = False
                return None
            if msg is None:
                return None
            if len(msg[1]) == TOKEN.size:  # else not a token of this version: dropped
                index, received = TOKEN.unpack(msg[1])
                return index, received
        return None

    def post(self, index: int, received: int) -> bool:
        """Post a token without blocking; False if it was lost (queue full or gone)."""
        if not self.alive:
            return False
        try:
            self.send(TOKEN_MTYPE, TOKEN.pack(index, received), block=False)
        except OSError as exc:
            if exc.errno in _QUEUE_GONE:
                self.alive = False
            elif exc.errno != errno.EAGAIN:
                raise OSError(exc.errno, f"msgsnd of idle token failed: {exc.strerror}") from exc
            return False
        return True
