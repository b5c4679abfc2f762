"""FLT-05's Hypothesis profiles: the names ``--fdpass-hypothesis-profile`` accepts."""

from __future__ import annotations

import pytest
from hypothesis import settings

from fdpass_conformance.suites.stateful import (
    PROFILE_DEFAULT,
    PROFILE_THOROUGH,
    resolve_profile,
)


def test_aliases_and_registered_profiles() -> None:
    real, chosen = resolve_profile("default")
    assert (real, chosen.derandomize, chosen.database) == (PROFILE_DEFAULT, True, None)
    real, chosen = resolve_profile("thorough")
    assert (real, chosen.derandomize) == (PROFILE_THOROUGH, False)
    assert chosen.max_examples > resolve_profile("default")[1].max_examples
    settings.register_profile("fdpass-test-user-profile", max_examples=3)
    real, chosen = resolve_profile("fdpass-test-user-profile")
    assert (real, chosen.max_examples) == ("fdpass-test-user-profile", 3)


def test_an_unknown_profile_is_a_usage_error_naming_the_choices() -> None:
    with pytest.raises(pytest.UsageError) as info:
        resolve_profile("fast")
    assert str(info.value) == (
        "--fdpass-hypothesis-profile=fast: no such Hypothesis profile (use default, thorough, "
        "or register one with hypothesis.settings.register_profile)"
    )
