"""Fixtures of the leak-detector tests: every object they make is removed at teardown."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .helpers import Children, OwnIpc


@pytest.fixture
def own_ipc() -> Iterator[OwnIpc]:
    own = OwnIpc()
    try:
        yield own
    finally:
        own.cleanup()


@pytest.fixture
def children() -> Iterator[Children]:
    kids = Children()
    try:
        yield kids
    finally:
        kids.cleanup()
