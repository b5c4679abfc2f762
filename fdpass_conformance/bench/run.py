"""One bench run: start every implementation, interleave repetitions, summarise.

Why interleaved: on a shared machine the available CPU changes from one
second to the next. Measuring A for a minute and then B for a minute
compares two different machines; measuring A, B, C, floor, then again in a
rotated order, and taking each ratio within one repetition, compares the
implementations under the same conditions. Each repetition has a
throughput phase (``clients`` closed loops for ``seconds`` or
``connections``) and a latency phase (one client, sequential connections:
the dispatch path without queueing behind other clients).
"""

from __future__ import annotations

import math
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..loading import ImplSpec
from . import load
from .procstat import process_cpu_seconds
from .servers import DEFAULT_DISPATCH_TIMEOUT, ServerHandle, start_server
from .stats import latency_summary, summary

SCHEMA = "fdpass-bench/1"
FLOOR = "floor"
BASELINE_NAME = "ForkSharedProxy"
#: Client CPU share above which the load generator, not the server, may be the limit.
CLIENT_SHARE_WARNING = 0.80
#: Sequential connections before each impl's first repetition (caches, tokens, pages).
WARMUP_CONNECTIONS = 50


@dataclass
class Config:
    impls: list[ImplSpec]
    workers: int = 2
    reps: int = 5
    seconds: float | None = 1.0
    connections: int | None = None
    clients: int = 2
    latency_samples: int = 200
    burst: int = 200
    dispatch_timeout: float = DEFAULT_DISPATCH_TIMEOUT
    isolate: bool | None = None


@dataclass
class RepResult:
    """One implementation in one repetition."""

    rate: float
    connections: int
    errors: int
    first_error: str
    wall: float
    master_cpu_us: float  # per connection
    worker_cpu_us: float  # per connection, all workers together
    client_share: float
    client_cpu_us: float  # per connection, all clients together
    burst_master_cpu_us: float = math.nan  # per connection, dispatching a queued burst
    latencies: list[float] = field(default_factory=list)
    loaded_latencies: list[float] = field(default_factory=list)


Progress = Callable[[str], None]


def _no_progress(text: str) -> None:
    pass


def run_bench(cfg: Config, progress: Progress = _no_progress) -> dict[str, Any]:
    """Run ``cfg`` and return the report (see ``docs/performance.md`` for the fields)."""
    servers: dict[str, ServerHandle] = {}
    notes: list[str] = []
    try:
        for impl in cfg.impls:
            progress(f"starting {impl.spec} ({cfg.workers} workers)")
            servers[impl.spec] = start_server(
                impl.factory,
                impl.spec,
                cfg.workers,
                dispatch_timeout=cfg.dispatch_timeout,
                isolate=cfg.isolate,
            )
        for impl in cfg.impls:
            progress(f"warming up {impl.spec}")
            _measure(servers[impl.spec], cfg, warmup=True)
        per_rep: dict[str, list[RepResult]] = {name: [] for name in [*servers, FLOOR]}
        order = [*servers, FLOOR]
        started = time.monotonic()
        total = cfg.reps * len(order)
        for rep in range(cfg.reps):
            shift = rep % len(order)
            for k, name in enumerate(order[shift:] + order[:shift]):
                done = rep * len(order) + k
                elapsed = time.monotonic() - started
                eta = f", ~{elapsed / done * (total - done):.0f}s left" if done else ""
                progress(f"rep {rep + 1}/{cfg.reps}  {name}  [{done}/{total} done{eta}]")
                if name == FLOOR:
                    per_rep[name].append(_measure_floor(cfg))
                else:
                    per_rep[name].append(_measure(servers[name], cfg))
    finally:
        for handle in servers.values():
            notes += handle.stop()
    return _report(cfg, servers, per_rep, notes)


def _measure(server: ServerHandle, cfg: Config, warmup: bool = False) -> RepResult:
    pids = [server.master_pid, *server.worker_pids]

    def cpu() -> dict[str, float]:
        return {str(pid): process_cpu_seconds(pid) for pid in pids}

    deadline = _deadline(cfg)
    if warmup:
        load.run_clients(load.latency_works(server.port, WARMUP_CONNECTIONS), deadline=deadline)
        return RepResult(0, 0, 0, "", 0, 0, 0, 0, 0)
    thr = load.run_clients(
        load.throughput_works(server.port, cfg.clients, cfg.seconds, cfg.connections),
        measure=cpu,
        deadline=deadline,
    )
    lat = load.run_clients(load.latency_works(server.port, cfg.latency_samples), deadline=deadline)
    burst_us = math.nan
    burst_errors = 0
    burst_error = ""
    if server.fd_passing and cfg.burst:
        burst = load.burst_phase(server.port, server.master_pid, cfg.burst, cpu, deadline)
        master_burst = burst.server_cpu.get(str(server.master_pid), math.nan)
        burst_us = master_burst / max(burst.connections, 1) * 1e6
        burst_errors, burst_error = burst.errors, burst.first_error
    n = max(thr.connections, 1)
    master = thr.server_cpu.get(str(server.master_pid), 0.0)
    workers = sum(v for k, v in thr.server_cpu.items() if k != str(server.master_pid))
    return RepResult(
        rate=thr.rate,
        connections=thr.connections,
        errors=thr.errors + lat.errors + burst_errors,
        first_error=thr.first_error or lat.first_error or burst_error,
        wall=thr.wall,
        master_cpu_us=master / n * 1e6,
        worker_cpu_us=workers / n * 1e6,
        client_share=thr.client_share,
        client_cpu_us=thr.client_cpu / n * 1e6,
        latencies=lat.latencies,
        loaded_latencies=thr.latencies,
        burst_master_cpu_us=burst_us,
    )


def _measure_floor(cfg: Config) -> RepResult:
    rate, lat = load.floor_phase(cfg.seconds, cfg.connections, cfg.latency_samples, _deadline(cfg))
    n = max(rate.connections, 1)
    return RepResult(
        rate=rate.rate,
        connections=rate.connections,
        errors=rate.errors,
        first_error=rate.first_error,
        wall=rate.wall,
        master_cpu_us=rate.client_cpu / n * 1e6,  # the sender plays the master
        worker_cpu_us=math.nan,
        client_share=math.nan,
        client_cpu_us=math.nan,
        latencies=lat.latencies,
    )


def _deadline(cfg: Config) -> float:
    """How long a phase may take before its clients are killed: generous, never unbounded."""
    base = 30.0 + cfg.latency_samples * 0.05
    if cfg.seconds is not None:
        return base + cfg.seconds * 2
    return base + (cfg.connections or 0) * 0.01


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 and math.isfinite(a) and math.isfinite(b) else math.nan


def _report(
    cfg: Config,
    servers: dict[str, ServerHandle],
    per_rep: dict[str, list[RepResult]],
    notes: list[str],
) -> dict[str, Any]:
    baseline = next((s for s in servers if s.endswith(":" + BASELINE_NAME)), None)
    floor_reps = per_rep[FLOOR]
    floor_lat = latency_summary([x for r in floor_reps for x in r.latencies])
    floor_cpu = summary([r.master_cpu_us for r in floor_reps])["median"]
    warnings: list[str] = list(notes)
    results: list[dict[str, Any]] = []
    base_reps = per_rep[baseline] if baseline else []
    base_lat = latency_summary([x for r in base_reps for x in r.latencies]) if baseline else None
    for impl in cfg.impls:
        reps = per_rep[impl.spec]
        server = servers[impl.spec]
        # Ratios within each repetition, then their median: drift between reps cancels.
        # Without a baseline there is nothing to pair with (strict=False: no ratios).
        rate_ratios = [_ratio(r.rate, b.rate) for r, b in zip(reps, base_reps, strict=False)]
        lat = latency_summary([x for r in reps for x in r.latencies])
        loaded = latency_summary([x for r in reps for x in r.loaded_latencies])
        overhead = lat["p50"] - base_lat["p50"] if base_lat is not None else math.nan
        share = max((r.client_share for r in reps), default=0.0)
        errors = sum(r.errors for r in reps)
        if errors:
            first = next(r.first_error for r in reps if r.first_error)
            warnings.append(f"{impl.spec}: {errors} failed connection(s); first: {first}")
        if share > CLIENT_SHARE_WARNING:
            warnings.append(
                f"{impl.spec}: a load client was busy {share:.0%} of the time (> "
                f"{CLIENT_SHARE_WARNING:.0%}): the load generator may be the bottleneck; "
                "try more --clients or fewer --workers"
            )
        results.append(
            {
                "impl": impl.spec,
                "name": impl.id,
                "fd_passing": server.fd_passing,
                "baseline": impl.spec == baseline,
                "connections_per_s": summary([r.rate for r in reps]),
                "ratio_vs_baseline": summary(rate_ratios)["median"],
                "latency_us": lat,
                "latency_p50_vs_floor": _ratio(lat["p50"], floor_lat["p50"]),
                "dispatch_overhead_us": overhead,
                "dispatch_overhead_vs_floor": _ratio(overhead, floor_lat["p50"]),
                "loaded_latency_us": loaded,
                "master_cpu_us_per_conn": summary([r.master_cpu_us for r in reps])["median"],
                "burst_master_cpu_us_per_conn": summary([r.burst_master_cpu_us for r in reps])[
                    "median"
                ],
                "burst_overhead_vs_floor": _ratio(
                    summary([r.burst_master_cpu_us for r in reps])["median"], floor_cpu
                ),
                "worker_cpu_us_per_conn": summary([r.worker_cpu_us for r in reps])["median"],
                "client_cpu_us_per_conn": summary([r.client_cpu_us for r in reps])["median"],
                "client_cpu_share": share,
                "connections": sum(r.connections for r in reps),
                "errors": errors,
                "reps": [_rep_json(r) for r in reps],
            }
        )
    floor = {
        "fds_per_s": summary([r.rate for r in floor_reps]),
        "latency_us": floor_lat,
        "sender_cpu_us_per_fd": floor_cpu,
        "fds": sum(r.connections for r in floor_reps),
        "reps": [_rep_json(r) for r in floor_reps],
    }
    return {
        "schema": SCHEMA,
        "config": {
            "impls": [i.spec for i in cfg.impls],
            "baseline": baseline,
            "workers": cfg.workers,
            "reps": cfg.reps,
            "seconds": cfg.seconds,
            "connections": cfg.connections,
            "clients": cfg.clients,
            "latency_samples": cfg.latency_samples,
            "burst": cfg.burst,
            "dispatch_timeout": cfg.dispatch_timeout,
            "isolation": sorted({s.isolation for s in servers.values()}),
        },
        "machine": {
            "cpus": os.cpu_count(),
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        },
        "results": results,
        "floor": floor,
        "warnings": warnings,
    }


def _rep_json(r: RepResult) -> dict[str, Any]:
    return {
        "connections_per_s": r.rate,
        "connections": r.connections,
        "errors": r.errors,
        "wall_s": r.wall,
        "master_cpu_us_per_conn": r.master_cpu_us,
        "burst_master_cpu_us_per_conn": r.burst_master_cpu_us,
        "worker_cpu_us_per_conn": r.worker_cpu_us,
        "client_cpu_share": r.client_share,
        "latency_us": latency_summary(r.latencies),
    }
