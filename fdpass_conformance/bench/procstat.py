"""CPU time of processes, precise enough to divide by a few thousand connections.

Why not only ``/proc/PID/stat``: its utime and stime count clock ticks
(10 ms at the usual ``CLK_TCK`` of 100), so one second of a master that uses
a third of a core would be measured to within 3%. ``/proc/PID/schedstat``
gives the scheduler's own count in nanoseconds; it is read first, and the
tick counts (through psutil, which also covers macOS) are the fallback.
"""

from __future__ import annotations

import time

import psutil


def process_cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) that ``pid`` has used so far; 0.0 once it is gone.

    Every process the bench measures is single-threaded, so the main thread's
    schedstat is the process's total.
    """
    try:
        with open(f"/proc/{pid}/schedstat") as f:
            return int(f.read().split()[0]) / 1e9
    except (OSError, ValueError, IndexError):
        pass
    try:
        times = psutil.Process(pid).cpu_times()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return 0.0
    return float(times.user + times.system)


def total_cpu_seconds(pids: list[int]) -> float:
    return sum(process_cpu_seconds(pid) for pid in pids)


def own_cpu_seconds() -> float:
    """CPU seconds of the calling process (all its threads), in nanosecond resolution."""
    return time.clock_gettime(time.CLOCK_PROCESS_CPUTIME_ID)
