"""The repository's short name for the reference proxies; the wheel does not install it.

The code lives in ``fdpass_conformance.reference`` (installed with the toolkit,
so a generic top-level name like ``reference`` is left to the projects that
use it). Tests and examples in this repository import ``reference`` and
``reference.listener``: both are the very same module objects as the real
ones, so monkeypatching either is seen by both.
"""

import sys

from fdpass_conformance import reference as _real
from fdpass_conformance.reference import *  # noqa: F403  (for type checkers)
from fdpass_conformance.reference import backpressure as backpressure
from fdpass_conformance.reference import channel as channel
from fdpass_conformance.reference import listener as listener
from fdpass_conformance.reference import master as master
from fdpass_conformance.reference import shared_listener as shared_listener
from fdpass_conformance.reference import tokens as tokens

for _module in (backpressure, channel, listener, master, shared_listener, tokens):
    sys.modules[f"{__name__}.{_module.__name__.rsplit('.', 1)[1]}"] = _module
sys.modules[__name__] = _real
