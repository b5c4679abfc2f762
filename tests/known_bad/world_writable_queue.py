"""Defect: the queue is created with mode 0666.

The pull request's ``msg_get_queue()`` was called without permissions, and PHP
then uses 0666: any local user can post fake idle tokens and steer or stall
dispatch. Breaks IPC-05.
"""

from __future__ import annotations

from fdpass_conformance.reference.tokens import TokenQueue
from reference import MasterProxy

BREAKS = frozenset({"IPC-05"})
SEED = "pull request: msg_get_queue() default permissions 0666"


class WorldWritableProxy(MasterProxy):
    def _create_queue(self) -> TokenQueue:
        return TokenQueue(mode=0o666)  # the defect
