"""Rendering a bench report: the text table, the JSON file and the optional chart.

The table leads with ratios because they are what survives a noisy machine:
connections per second relative to the baseline (ForkShared) measured in
the same repetitions, and latency relative to the bare ``send_fds`` floor.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import math
from pathlib import Path
from typing import Any


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    if value is None or not math.isfinite(value):
        return "-"
    return format(value, spec) + suffix


def render_table(report: dict[str, Any]) -> str:
    """The human-readable summary printed to stdout."""
    cfg = report["config"]
    size = f"{cfg['seconds']:g}s" if cfg["seconds"] is not None else f"{cfg['connections']} conns"
    head = (
        f"fdpass-bench: {cfg['workers']} workers, {cfg['clients']} clients, {cfg['reps']} reps "
        f"x {size} + {cfg['latency_samples']} sequential connections "
        f"({report['machine']['cpus']} cpus)"
    )
    cols = (
        "implementation",
        "conn/s",
        "x base",
        "p50 us",
        "p99 us",
        "p50 x floor",
        "+p50 us",
        "master us/conn",
        "burst us/conn",
        "client busy",
    )
    rows: list[tuple[str, ...]] = []
    for r in report["results"]:
        name = r["name"] + (" (base)" if r["baseline"] else "")
        rows.append(
            (
                name,
                _fmt(r["connections_per_s"]["median"], ".0f"),
                _fmt(r["ratio_vs_baseline"], ".2f", "x"),
                _fmt(r["latency_us"]["p50"], ".1f"),
                _fmt(r["latency_us"]["p99"], ".1f"),
                _fmt(r["latency_p50_vs_floor"], ".2f", "x"),
                "" if r["baseline"] else _fmt(r["dispatch_overhead_us"], "+.1f"),
                _fmt(r["master_cpu_us_per_conn"], ".1f") if r["fd_passing"] else "-",
                _fmt(r["burst_master_cpu_us_per_conn"], ".1f") if r["fd_passing"] else "-",
                _fmt(r["client_cpu_share"] * 100, ".0f", "%"),
            )
        )
    fl = report["floor"]
    rows.append(
        (
            "floor: send_fds",
            _fmt(fl["fds_per_s"]["median"], ".0f") + " fd/s",
            "",
            _fmt(fl["latency_us"]["p50"], ".1f"),
            _fmt(fl["latency_us"]["p99"], ".1f"),
            "1.00x",
            "",
            _fmt(fl["sender_cpu_us_per_fd"], ".1f"),
            _fmt(fl["sender_cpu_us_per_fd"], ".1f"),
            "",
        )
    )
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(cols)]
    lines = [head, ""]
    lines.append(
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cols, widths, strict=True))
        )
    )
    lines.append("  ".join("-" * w for w in widths))
    for row in rows:
        lines.append(
            "  ".join(
                v.ljust(w) if i == 0 else v.rjust(w)
                for i, (v, w) in enumerate(zip(row, widths, strict=True))
            )
        )
    lines.append("")
    lines.append(
        "conn/s: median over reps; x base: median of per-rep ratios to the baseline; "
        "p50/p99: client connect() until the worker holds the fd (sequential connections); "
        "+p50: dispatch overhead over the baseline; master us/conn: master CPU per connection "
        "in the throughput phase; burst us/conn: the same, dispatching a queued burst (no "
        "idle wake-ups); floor: the sender's CPU per fd"
    )
    for r in report["results"]:
        if not r["fd_passing"]:
            continue
        if _finite(r["dispatch_overhead_vs_floor"]):
            lines.append(
                f"{r['name']}: dispatch latency overhead {r['dispatch_overhead_us']:+.1f} us = "
                f"{r['dispatch_overhead_vs_floor']:.2f}x the send_fds floor latency "
                f"({fl['latency_us']['p50']:.1f} us)"
            )
        if _finite(r["burst_overhead_vs_floor"]):
            lines.append(
                f"{r['name']}: dispatch CPU {r['burst_master_cpu_us_per_conn']:.1f} us/conn = "
                f"{r['burst_overhead_vs_floor']:.2f}x the floor's send CPU "
                f"({fl['sender_cpu_us_per_fd']:.1f} us/fd)"
            )
    for w in report["warnings"]:
        lines.append(f"warning: {w}")
    return "\n".join(lines)


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def _clean(obj: Any) -> Any:
    """NaN and infinities become null: the file must be valid JSON for any reader."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    return obj


def write_json(report: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(_clean(report), indent=2, allow_nan=False) + "\n")


def matplotlib_missing() -> bool:
    """True when ``--plot`` cannot work; checked before the run, not after it."""
    return importlib.util.find_spec("matplotlib") is None


def write_plot(report: dict[str, Any], path: Path) -> None:
    """Two panels: connections/s with the spread of the reps, and latency p50/p99 with the floor."""
    # Imported by name: matplotlib is an optional dependency without type stubs here.
    matplotlib: Any = importlib.import_module("matplotlib")
    matplotlib.use("Agg")
    plt: Any = importlib.import_module("matplotlib.pyplot")

    names = [r["name"] for r in report["results"]]
    med = [r["connections_per_s"]["median"] for r in report["results"]]
    lo = [m - r["connections_per_s"]["min"] for m, r in zip(med, report["results"], strict=True)]
    hi = [r["connections_per_s"]["max"] - m for m, r in zip(med, report["results"], strict=True)]
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(15, 4.4))
    ax1.bar(names, med, yerr=[lo, hi], capsize=4, color="#4c72b0")
    ax1.set_title("connections per second (median, min..max)")
    lat_names = [*names, "send_fds floor"]
    lats = [r["latency_us"] for r in report["results"]] + [report["floor"]["latency_us"]]
    xs = list(range(len(lat_names)))
    ax2.bar([x - 0.2 for x in xs], [lat["p50"] for lat in lats], width=0.4, label="p50")
    ax2.bar([x + 0.2 for x in xs], [lat["p99"] for lat in lats], width=0.4, label="p99")
    ax2.set_xticks(xs, lat_names)
    ax2.set_yscale("log")  # p99 on a busy machine is often 100x p50
    ax2.set_ylabel("microseconds (log)")
    ax2.set_title("connect() until the worker holds the fd")
    ax2.legend()
    fd = [r for r in report["results"] if r["fd_passing"]]
    cpu_names = [*(r["name"] for r in fd), "send_fds floor"]
    floor_cpu = report["floor"]["sender_cpu_us_per_fd"]
    closed = [r["master_cpu_us_per_conn"] for r in fd] + [floor_cpu]
    burst = [r["burst_master_cpu_us_per_conn"] for r in fd] + [floor_cpu]
    xs = list(range(len(cpu_names)))
    ax3.bar([x - 0.2 for x in xs], [v or 0.0 for v in closed], width=0.4, label="closed loop")
    ax3.bar([x + 0.2 for x in xs], [v or 0.0 for v in burst], width=0.4, label="burst")
    ax3.set_xticks(xs, cpu_names)
    ax3.set_ylabel("microseconds of master CPU per connection")
    ax3.set_title("master CPU per connection")
    ax3.legend()
    for ax in (ax1, ax2, ax3):
        plt.setp(ax.get_xticklabels(), rotation=30, ha="right")
    cfg = report["config"]
    fig.suptitle(f"fdpass-bench: {cfg['workers']} workers, {cfg['reps']} interleaved reps")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
