"""CPU accounting of the bench: schedstat first, psutil's tick counts where it is missing."""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import pytest

from fdpass_conformance.bench import procstat

pytestmark = [
    pytest.mark.timeout(30),
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/PID/schedstat"),
]


def _busy(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def _dead_pid() -> int:
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        os._exit(0)
    os.waitpid(pid, 0)
    return pid


def test_a_gone_process_counts_zero() -> None:
    dead = _dead_pid()
    assert procstat.process_cpu_seconds(dead) == 0.0
    own = procstat.process_cpu_seconds(os.getpid())
    assert own > 0
    assert own <= procstat.total_cpu_seconds([os.getpid(), dead]) < own + 1


def test_without_schedstat_the_tick_counts_are_used(monkeypatch: pytest.MonkeyPatch) -> None:
    """MOCK: /proc/PID/schedstat reported missing (kernels without CONFIG_SCHEDSTATS);
    the fallback reads psutil's user+system time of the same, real process."""
    real_open: Any = open

    def no_schedstat(path: str, *args: Any, **kwargs: Any) -> Any:
        if str(path).endswith("/schedstat"):
            raise FileNotFoundError(path)
        return real_open(path, *args, **kwargs)

    _busy(0.05)
    precise = procstat.process_cpu_seconds(os.getpid())
    monkeypatch.setattr(procstat, "open", no_schedstat, raising=False)
    ticks = procstat.process_cpu_seconds(os.getpid())
    assert ticks > 0
    assert abs(ticks - precise) < 0.5  # the same process, counted in 10 ms ticks
