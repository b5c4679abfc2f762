"""Defect: the master's ``close()`` forgets the channels.

Listeners and queue are released, the master ends of the channels are not.
Breaks FP-11 (workers blocked in ``accept`` never get ``EOFError``) and
SP-12 (``close()`` does not release every fd the proxy created).

FLT-05 fails as well: its teardown invariant requires every worker to leave
on its own after the master's ``close()``; and FP-15, because a child forked
after that ``close()`` can still ``enter_worker(0)`` on the channels it kept.
"""

from __future__ import annotations

from reference import MasterProxy

BREAKS = frozenset({"SP-12", "FP-11", "FP-15", "FLT-05"})


class ChannelsKeptProxy(MasterProxy):
    def close(self) -> None:
        for sock in (*self._listeners, self._chan):
            if sock is not None:
                sock.close()
        self._listeners = []
        self._chan = None
        self._remove_queue()
        # The defect: self._master_ends (and any unsealed worker ends) stay open.
