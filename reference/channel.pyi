"""For type checkers: at run time ``reference`` maps this name to the real module."""

from fdpass_conformance.reference.channel import *  # noqa: F403
