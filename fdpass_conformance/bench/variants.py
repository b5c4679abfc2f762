"""Zero-argument factories for ``--impl``: reference configurations a MODULE:ATTR cannot spell.

``--impl`` names a callable without arguments (the contract's factory), so
a MasterProxy with backpressure needs a name of its own to be measured side
by side with the default one:
``--impl fdpass_conformance.bench.variants:bounded_master``.
"""

from __future__ import annotations

from fdpass_conformance.reference import MasterProxy

#: Waiting room of the bounded variants: larger than any burst (--burst <= 2000), so the
#: bench measures the bounded hand-out, never the overflow policy.
BOUNDED_PENDING = 4096


def bounded_master() -> MasterProxy:
    """MasterProxy(max_pending=4096): hand-out bounded to one connection per worker."""
    return MasterProxy(max_pending=BOUNDED_PENDING)


def bounded_master_inflight2() -> MasterProxy:
    """MasterProxy(max_pending=4096, max_inflight=2): one more may queue in a busy worker."""
    return MasterProxy(max_pending=BOUNDED_PENDING, max_inflight=2)


class RoundRobinMasterProxy(MasterProxy):
    """MasterProxy without the idle-token read: what that msgrcv per dispatch costs.

    Only for measuring (it reaches into a private method of the reference):
    the default, unbounded dispatch skips the queue and goes round-robin, so
    it loses the idle preference (FP-12) that the read pays for.
    """

    def _pick_token(self, busy: set[int]) -> int | None:
        if self.max_pending is None:
            return None
        return super()._pick_token(busy)
