"""Fixtures shared by the fault-injection tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .helpers import SENDMSG_LOOP, LineProcess


@pytest.fixture
def tracee() -> Iterator[LineProcess]:
    """A real process calling sendmsg in a loop, for strace to attach to."""
    proc = LineProcess(SENDMSG_LOOP)
    try:
        yield proc
    finally:
        proc.close()
