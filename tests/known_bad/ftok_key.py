"""Defect: the queue is keyed with ``ftok(__file__, 'M')`` and opened with IPC_CREAT.

Seed round 3 follow-up: "ftok(__FILE__, 'M') fragile: couples queue identity
to file path". Every instance made from this module computes the same key and
so opens the same queue. Breaks IPC-04 (a fixed key shared by every instance)
and FP-13 (two instances in one process share their IPC object).
"""

from __future__ import annotations

import ctypes
import os

from fdpass_conformance import sysv
from fdpass_conformance.reference.tokens import TokenQueue
from reference import MasterProxy

BREAKS = frozenset({"IPC-04", "FP-13"})
SEED = "round 3 follow-up: ftok(__FILE__, 'M') key is fragile and shared by every instance"

_libc = ctypes.CDLL(None, use_errno=True)


def _oserror(step: str) -> OSError:
    code = ctypes.get_errno()
    return OSError(code, f"create_socket: {step} failed: {os.strerror(code)}")


class FtokQueue(TokenQueue):
    """A queue found by a key: whoever computes the same key gets the same queue."""

    def __init__(self, path: str, proj: str) -> None:
        key = int(_libc.ftok(path.encode(), ord(proj)))
        if key == -1:
            raise _oserror("ftok")
        qid = int(_libc.msgget(key, sysv.IPC_CREAT | 0o600))  # no IPC_EXCL: shared
        if qid < 0:
            raise _oserror("msgget")
        self.id = qid
        self.owner_pid = os.getpid()
        self.removed = False


class FtokKeyProxy(MasterProxy):
    def _create_queue(self) -> TokenQueue:
        return FtokQueue(__file__, "M")  # the defect
