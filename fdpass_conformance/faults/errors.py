"""What the fault layers share: the "unavailable" error and errno argument checking."""

from __future__ import annotations

import errno


class FaultUnavailable(RuntimeError):
    """A fault layer cannot run here; the message is the reason, for a skip or a report line."""


def parse_errno(error: str | int) -> int:
    """Turn ``"ENOBUFS"`` or ``105`` into an errno number; ValueError in one line otherwise.

    Names are checked against this platform's ``errno`` module, so a name the
    kernel does not know (``"ENOBUF"``, ``"EFOO"``) fails before anything is
    attached or patched.
    """
    if isinstance(error, bool):
        raise ValueError(f"error must be an errno name or number, got {error!r}")
    if isinstance(error, int):
        if not 1 <= error <= 4095:
            raise ValueError(f"errno number must be within 1..4095, got {error}")
        return error
    if isinstance(error, str):
        code = getattr(errno, error, None) if error.startswith("E") else None
        if not isinstance(code, int):
            raise ValueError(f"unknown errno name {error!r}")
        return code
    raise ValueError(f"error must be an errno name or number, got {type(error).__name__}")


def errno_name(code: int) -> str:
    """The symbolic name of ``code`` (``"ENOBUFS"``), or its number as text."""
    return errno.errorcode.get(code, str(code))
