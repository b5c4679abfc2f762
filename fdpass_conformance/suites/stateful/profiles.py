"""FLT-05's Hypothesis profiles: how many sequences of how many steps, and from which seed."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis.errors import InvalidArgument

#: The profile of an ordinary conformance run: bounded, and the same sequences every run.
PROFILE_DEFAULT = "fdpass-default"
#: Many more and longer sequences, from a fresh seed each run (recorded in the report).
PROFILE_THOROUGH = "fdpass-thorough"
#: ``--fdpass-hypothesis-profile`` values that name the profiles above.
PROFILE_ALIASES = {"default": PROFILE_DEFAULT, "thorough": PROFILE_THOROUGH}
#: The seed of the default profile (and of every derandomized profile).
FIXED_SEED = 20_050_105

settings.register_profile(
    PROFILE_DEFAULT,
    max_examples=15,
    stateful_step_count=12,
    deadline=None,
    derandomize=True,
    database=None,  # nothing written into the user's tree; the seed makes runs repeatable
    report_multiple_bugs=False,  # one failure, one invariant named in the first line
    print_blob=False,
    phases=(Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink),
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
        HealthCheck.data_too_large,
    ],
)
settings.register_profile(
    PROFILE_THOROUGH,
    parent=settings.get_profile(PROFILE_DEFAULT),
    max_examples=200,
    stateful_step_count=40,
    derandomize=False,
)


def resolve_profile(name: str) -> tuple[str, settings]:
    """The Hypothesis profile for a ``--fdpass-hypothesis-profile`` value.

    ``default`` and ``thorough`` name this module's profiles; any other name
    must be a profile the user registered with ``settings.register_profile``.
    """
    real = PROFILE_ALIASES.get(name, name)
    try:
        return real, settings.get_profile(real)
    except InvalidArgument:
        known = ", ".join(sorted(PROFILE_ALIASES))
        raise pytest.UsageError(
            f"--fdpass-hypothesis-profile={name}: no such Hypothesis profile "
            f"(use {known}, or register one with hypothesis.settings.register_profile)"
        ) from None


def profile_scale(name: str) -> float:
    """The work of profile ``name`` (sequences x steps) over the default's, at least 1."""
    _real, chosen = resolve_profile(name)
    default = settings.get_profile(PROFILE_DEFAULT)
    work = chosen.max_examples * chosen.stateful_step_count
    return max(1.0, work / (default.max_examples * default.stateful_step_count))
