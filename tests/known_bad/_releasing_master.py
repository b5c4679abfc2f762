"""A correct MasterProxy that closes a dead worker's channel end as soon as it knows.

The reference keeps the end until ``close()``; closing it at the first EPIPE is
just as right (nothing can be sent there again) and frees an fd at once. The
master's fd table then shrinks below what the suites saw before, and a worker
that the toolkit's injected EPIPE declared dead (while it was alive) leaves on
EOF, as it should. Suites that compared fd counts for equality, or counted every
clean worker exit as a crash, failed this design; it is listed with the
references, which pass every requirement that applies.
"""

from __future__ import annotations

from reference import MasterProxy


class ReleasingMasterProxy(MasterProxy):
    def _peer_gone(self, index: int, exc: OSError) -> None:
        super()._peer_gone(index, exc)
        end = self._master_ends[index]
        if end is not None:
            end.close()
