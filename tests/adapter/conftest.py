"""Every adapter test leaves no program behind: proxies are dropped, finalizers run,
and any child still alive afterwards fails the test (and is killed)."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

import psutil  # type: ignore[import-untyped, unused-ignore]
import pytest


@pytest.fixture(autouse=True)
def no_process_left() -> Iterator[None]:
    yield
    gc.collect()  # unreferenced proxies stop their programs in their finalizers
    left = psutil.Process().children(recursive=True)
    if not left:
        return
    names = ", ".join(f"{p.pid} ({_command(p)})" for p in left)
    for proc in left:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    psutil.wait_procs(left, timeout=5)
    pytest.fail(f"processes left behind (now killed): {names}", pytrace=False)


def _command(proc: psutil.Process) -> str:
    try:
        return " ".join(proc.cmdline()[:3])
    except psutil.Error:  # a zombie has no command line left
        return "a zombie"
