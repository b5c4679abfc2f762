"""The Hypothesis profile of the corpus session: the default's sequences, no shrinking.

The corpus asks only whether FLT-05 fails, not for the smallest failing
program. The default profile's fixed seed and examples find the same
failures whether or not they are shrunk afterwards, and not shrinking saves
minutes on the proxies that fail. Loaded by the corpus session with
``-p known_bad._profile``.
"""

from __future__ import annotations

from hypothesis import Phase, settings

from fdpass_conformance.suites.stateful import PROFILE_DEFAULT

CORPUS_PROFILE = "fdpass-corpus"

settings.register_profile(
    CORPUS_PROFILE,
    parent=settings.get_profile(PROFILE_DEFAULT),
    phases=(Phase.explicit, Phase.reuse, Phase.generate),
)
