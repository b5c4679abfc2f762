"""FLT-05: random interleavings of traffic, kills and faults keep every invariant.

The state machine and its invariants live in ``stateful``; this module only
exposes them as a suite. The run is bounded by the Hypothesis profile chosen
with ``--fdpass-hypothesis-profile`` (``default``: 15 sequences of at most 12
steps, a fixed seed; ``thorough``: 200 sequences of at most 40 steps, a fresh
seed each run). A failure's first line names the broken invariant; the shrunk
steps follow, as Hypothesis prints them and in the report's
``fdpass_steps`` property.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from .base import SuiteBase, needs
from .stateful import run_stateful


class StatefulSuite(SuiteBase):
    @pytest.mark.requirement("FLT-05")
    @needs("served")
    def test_random_interleavings_keep_invariants(
        self, impl: Callable[[], object], request: pytest.FixtureRequest
    ) -> None:
        run_stateful(impl, request)
