"""Every plugin test leaves no process behind, even when it fails.

Inner pytest runs fork children; if one survived, later tests (and other
suites on this machine) would see its fds, ports and IPC objects.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import psutil  # type: ignore[import-untyped, unused-ignore]
import pytest


@pytest.fixture(autouse=True)
def no_process_left() -> Iterator[None]:
    yield
    left = psutil.Process().children(recursive=True)
    if not left:
        return
    names = ", ".join(f"{p.pid}" for p in left)
    for proc in left:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    psutil.wait_procs(left, timeout=5)
    pytest.fail(f"processes left behind (now killed): {names}", pytrace=False)
