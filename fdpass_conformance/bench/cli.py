"""The ``fdpass-bench`` command line.

Errors a user can fix (a wrong ``--impl``, a number out of range, ``--plot``
without matplotlib) are reported as one line on stderr with exit status 2,
before anything is forked; argparse's usage dump is replaced by that line,
because the problem, not the synopsis, is what the user needs to see.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from ..loading import ImplSpec, unique_ids
from . import report as rep
from .run import Config, run_bench
from .servers import DEFAULT_DISPATCH_TIMEOUT, ServerError
from .usage import (
    Parser,
    UsageError,
    impl_option,
    int_at_least,
    positive_seconds,
    print_error,
)

PROG = "fdpass-bench"
DEFAULT_IMPLS = (
    "reference:ForkSharedProxy",
    "reference:ReusePortProxy",
    "reference:MasterProxy",
)
BASELINE = "reference:ForkSharedProxy"
MAX_WORKERS = 256
MAX_CLIENTS = 256


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog=PROG,
        description=(
            "Measure proxies side by side in one run (interleaved repetitions): connections "
            "per second, dispatch latency (client connect until the worker holds the fd) and "
            "master CPU per connection, against a bare send_fds/recv_fds floor."
        ),
    )
    p.add_argument(
        "--impl",
        action="append",
        metavar="MODULE:ATTR",
        help="implementation to measure (repeatable; default: the three references). "
        f"{BASELINE} is always measured too, as the baseline of the ratios",
    )
    p.add_argument("--workers", type=int_at_least(1, MAX_WORKERS), default=2, metavar="W")
    p.add_argument("--reps", type=int_at_least(1, 1000), default=5, metavar="N")
    size = p.add_mutually_exclusive_group()
    size.add_argument(
        "--seconds",
        type=positive_seconds,
        metavar="S",
        help="length of each throughput phase (default 1.0)",
    )
    size.add_argument(
        "--connections",
        type=int_at_least(1),
        metavar="N",
        help="connections per throughput phase, instead of --seconds",
    )
    p.add_argument(
        "--clients",
        type=int_at_least(1, MAX_CLIENTS),
        default=2,
        metavar="C",
        help="load client processes in the throughput phase (connections in flight; default 2)",
    )
    p.add_argument(
        "--latency-samples",
        type=int_at_least(1, 1_000_000),
        default=200,
        metavar="N",
        help="sequential connections per rep for the latency percentiles (default 200)",
    )
    p.add_argument(
        "--burst",
        type=int_at_least(0, 2000),
        default=200,
        metavar="N",
        help="connections per rep queued while the master is stopped, then dispatched back to "
        "back: the master's CPU per connection without idle wake-ups (0: skip; default 200)",
    )
    p.add_argument(
        "--dispatch-timeout",
        type=positive_seconds,
        default=DEFAULT_DISPATCH_TIMEOUT,
        metavar="S",
        help="timeout the bench's master passes to dispatch() (it checks for stop in between)",
    )
    p.add_argument("--json", type=Path, metavar="PATH", help="write the full report as JSON")
    p.add_argument("--plot", type=Path, metavar="PATH", help="write a PNG chart (needs matplotlib)")
    prog = p.add_mutually_exclusive_group()
    prog.add_argument("--progress", dest="progress", action="store_true", default=None)
    prog.add_argument("--no-progress", dest="progress", action="store_false")
    return p


def _load(specs: Sequence[str]) -> list[ImplSpec]:
    impls: list[ImplSpec] = []
    seen: set[str] = set()
    for spec in [BASELINE, *specs] if BASELINE not in specs else specs:
        if spec in seen:
            continue
        seen.add(spec)
        impls.append(impl_option(spec))
    return unique_ids(impls)


class _Progress:
    """One status line on stderr, rewritten in place (only on a terminal, unless forced)."""

    def __init__(self, stream: TextIO, enabled: bool) -> None:
        self.stream, self.enabled, self.width = stream, enabled, 0

    def __call__(self, text: str) -> None:
        if not self.enabled:
            return
        line = f"{PROG}: {text}"
        self.stream.write("\r" + line.ljust(self.width))
        self.stream.flush()
        self.width = len(line)

    def done(self) -> None:
        if self.enabled and self.width:
            self.stream.write("\r" + " " * self.width + "\r")
            self.stream.flush()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the bench; 0 on success, 1 if an implementation failed to serve, 2 for bad input."""
    try:
        args = build_parser().parse_args(argv)
        if args.plot is not None and rep.matplotlib_missing():
            raise UsageError(
                "--plot needs matplotlib, which is not installed: pip install matplotlib"
            )
        for option, path in (("--json", args.json), ("--plot", args.plot)):
            if path is not None and not path.resolve().parent.is_dir():
                raise UsageError(f"{option} {path}: directory {path.parent} does not exist")
        specs = args.impl if args.impl else list(DEFAULT_IMPLS)
        cfg = Config(
            impls=_load(specs),
            workers=args.workers,
            reps=args.reps,
            seconds=args.seconds if args.connections is None else None,
            connections=args.connections,
            clients=args.clients,
            latency_samples=args.latency_samples,
            burst=args.burst,
            dispatch_timeout=args.dispatch_timeout,
        )
        if cfg.seconds is None and cfg.connections is None:
            cfg.seconds = 1.0
    except UsageError as exc:
        print_error(PROG, exc)
        return 2
    progress = _Progress(
        sys.stderr, sys.stderr.isatty() if args.progress is None else bool(args.progress)
    )
    try:
        report = run_bench(cfg, progress)
    except ServerError as exc:
        progress.done()
        print_error(PROG, exc)
        return 1
    except KeyboardInterrupt:
        progress.done()
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    progress.done()
    print(rep.render_table(report))
    try:
        if args.json is not None:
            rep.write_json(report, args.json)
        if args.plot is not None:
            rep.write_plot(report, args.plot)
    except OSError as exc:
        print_error(PROG, f"cannot write {exc.filename}: {exc.strerror}")
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
