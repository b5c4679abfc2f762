"""ACME's pre-fork proxy: an fd-passing master checked by fdpass-conformance in CI."""

from .proxy import AcmeMasterProxy

__all__ = ["AcmeMasterProxy"]
