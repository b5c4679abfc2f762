"""Where an fd-passing proxy's dispatch latency goes, stage by stage.

``fdpass-bench`` says how much later a worker holds a connection with a
master in the path than without one; this says why. A sequential client
connects; the master waits on the listener with its own ``poll`` and stamps
the time it wakes, calls ``dispatch(listener, None)`` (a blocking accept with
nothing left to wait for) and stamps again; the worker stamps when ``accept``
returns. All stamps are CLOCK_MONOTONIC, which is system-wide. Medians of:

* ``connect()``: the client's connect call (the loopback handshake runs in it);
* connect -> master awake: the first wake-up, the one every strategy pays;
* dispatch: accept, choose, sendmsg, close, in wall-clock time;
* sent -> worker holds it: the second wake-up, only an fd-passing master pays;
* total, next to the baseline's (a shared listener: one wake-up) and the floor
  (a bare send_fds to a blocked process).

Run: ``python -m fdpass_conformance.bench.breakdown [--impl MODULE:ATTR]``.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import select
import socket
import statistics
import struct
import time
from collections.abc import Sequence
from typing import Any

from ..loading import load_impl
from ..processes import fork_child, kill_and_reap, wait_pid
from .usage import Parser, UsageError, impl_option, int_at_least, print_error

PROG = "fdpass-bench-breakdown"
STAMPS = struct.Struct("=dd")
STAMP = struct.Struct("=d")
WARMUP = 20
TIMEOUT = 5.0


def _worker(proxy: Any, listener: socket.socket, fd_passing: bool, index: int) -> int:
    if fd_passing:
        proxy.enter_worker(index)
    while True:
        try:
            conn = proxy.accept(listener)
        except EOFError:
            return 0
        stamp = time.monotonic()
        with contextlib.suppress(OSError):
            conn.recv(16)
            conn.sendall(STAMP.pack(stamp))
        conn.close()


def _master(proxy: Any, listener: socket.socket, out_fd: int, count: int) -> int:
    poller = select.poll()
    poller.register(listener.fileno(), select.POLLIN)
    for _ in range(count):
        if not poller.poll(TIMEOUT * 1000):
            return 1
        awake = time.monotonic()
        proxy.dispatch(listener, None)
        os.write(out_fd, STAMPS.pack(awake, time.monotonic()))
    return 0


def measure(spec: str, workers: int, count: int) -> list[float]:
    """Medians in microseconds: connect(), ->master awake, dispatch, ->worker, total."""
    impl = load_impl(spec)
    proxy: Any = impl.factory()
    listener = proxy.create_socket(0)
    port = listener.getsockname()[1]
    if impl.fd_passing:
        proxy.open_channels(workers)
    pids: list[int] = []
    r, w = os.pipe()
    rows: list[tuple[float, ...]] = []
    try:
        for i in range(workers):
            pids.append(fork_child(functools.partial(_worker, proxy, listener, impl.fd_passing, i)))
        if impl.fd_passing:
            pids.append(fork_child(functools.partial(_master, proxy, listener, w, count + WARMUP)))
        os.close(w)
        w = -1
        buf = b""
        for k in range(count + WARMUP):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.settimeout(TIMEOUT)
                t0 = time.monotonic()
                s.connect(("127.0.0.1", port))
                t_conn = time.monotonic()
                s.sendall(b"x")
                data = b""
                while len(data) < STAMP.size:
                    chunk = s.recv(16)
                    if not chunk:
                        raise OSError("the worker closed without an answer")
                    data += chunk
                (t_worker,) = STAMP.unpack_from(data)
            awake = sent = math.nan
            if impl.fd_passing:
                while len(buf) < STAMPS.size:
                    if not select.select([r], [], [], TIMEOUT)[0]:
                        raise OSError("the master stopped reporting")
                    buf += os.read(r, 4096)
                awake, sent = STAMPS.unpack_from(buf)
                buf = buf[STAMPS.size :]
            if k >= WARMUP:
                rows.append((t_conn - t0, awake - t0, sent - awake, t_worker - sent, t_worker - t0))
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)
        proxy.close()
        for pid in pids:
            kill_and_reap(pid)
    return [statistics.median(row[j] for row in rows) * 1e6 for j in range(5)]


def measure_floor(count: int) -> float:
    """Median of send_fds to a blocked process until it holds the fd, in microseconds."""
    kind = getattr(socket, "SOCK_SEQPACKET", socket.SOCK_STREAM)
    a, b = socket.socketpair(socket.AF_UNIX, kind)

    def receive() -> int:
        a.close()
        while True:
            msg, fds, _, _ = socket.recv_fds(b, 8, 1)
            stamp = time.monotonic()
            for fd in fds:
                os.close(fd)
            if msg != b"p":
                return 0
            b.send(STAMP.pack(stamp))

    pid = fork_child(receive)
    b.close()
    vals: list[float] = []
    try:
        with socket.socket() as passed:
            a.settimeout(TIMEOUT)
            for k in range(count + WARMUP):
                t0 = time.monotonic()
                socket.send_fds(a, [b"p"], [passed.fileno()])
                (t1,) = STAMP.unpack(a.recv(STAMP.size))
                if k >= WARMUP:
                    vals.append(t1 - t0)
            a.send(b"e")
    finally:
        a.close()
        # the receiver returns on b"e" or on EOF; a stuck one is killed after the deadline
        with contextlib.suppress(ChildProcessError, TimeoutError):
            wait_pid(pid, TIMEOUT)
    return statistics.median(vals) * 1e6


def main(argv: Sequence[str] | None = None) -> int:
    p = Parser(prog=PROG, description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--impl", default="reference:MasterProxy", metavar="MODULE:ATTR")
    p.add_argument("--baseline", default="reference:ForkSharedProxy", metavar="MODULE:ATTR")
    p.add_argument("--workers", type=int_at_least(1), default=2)
    p.add_argument("--connections", type=int_at_least(1), default=2000)
    p.add_argument("--reps", type=int_at_least(1), default=3)
    try:
        args = p.parse_args(argv)
        impl = impl_option(args.impl)
        impl_option(args.baseline, "--baseline")
        if not impl.fd_passing:
            raise UsageError(f"--impl {args.impl}: not an fd-passing proxy (it has no dispatch)")
    except UsageError as exc:
        print_error(PROG, exc)
        return 2
    print(
        f"{PROG}: {args.impl} vs {args.baseline}, {args.workers} workers, "
        f"{args.connections} sequential connections x {args.reps} reps (medians, us)"
    )
    print("connect()  ->master awake  dispatch  ->worker  total | baseline total  | floor")
    for _ in range(args.reps):
        try:
            m = measure(args.impl, args.workers, args.connections)
            base = measure(args.baseline, args.workers, args.connections)
            floor = measure_floor(args.connections)
        except OSError as exc:
            print_error(PROG, exc)
            return 1
        print(
            f"{m[0]:9.1f}  {m[1]:14.1f}  {m[2]:8.1f}  {m[3]:8.1f}  {m[4]:5.1f} | "
            f"{base[4]:14.1f}  | {floor:5.1f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
