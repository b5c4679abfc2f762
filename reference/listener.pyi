"""For type checkers: at run time ``reference`` maps this name to the real module."""

from fdpass_conformance.reference.listener import *  # noqa: F403
