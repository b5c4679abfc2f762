"""The event pipe keeps life-cycle events under a flood of error events.

A known-bad proxy whose workers each report hundreds of accept errors at once
filled the pipe, and a third worker's "ready" was dropped: start-up then
failed as if the worker never came up. Real pipes, filled for real.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Iterator

import pytest

from fdpass_conformance.harness import events
from fdpass_conformance.harness.events import EventReader, EventWriter

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    """A pipe whose write end is non-blocking, as the harness makes it."""
    r, w = os.pipe()
    fcntl.fcntl(w, fcntl.F_SETFL, fcntl.fcntl(w, fcntl.F_GETFL) | os.O_NONBLOCK)
    yield r, w
    os.close(r)
    os.close(w)


def fill(w: int) -> None:
    """Write until the kernel refuses: the pipe is really full."""
    chunk = b"x" * 4096
    while True:
        try:
            os.write(w, chunk)
        except BlockingIOError:
            try:
                os.write(w, b"x")
            except BlockingIOError:
                return


def test_error_events_are_dropped_and_counted_when_the_pipe_is_full(
    pipe: tuple[int, int],
) -> None:
    _, w = pipe
    writer = EventWriter(w, "worker", 0)
    fill(w)
    started = time.monotonic()
    for _ in range(3):
        writer.emit("serve-error", errno=24, message="accept: too many open files")
    assert writer.dropped == 3
    assert time.monotonic() - started < events.LIFECYCLE_WAIT, "a lossy event waited"


def test_a_life_cycle_event_waits_for_room_and_arrives(pipe: tuple[int, int]) -> None:
    r, w = pipe
    writer = EventWriter(w, "worker", 2)
    fill(w)

    def drain_later() -> None:
        time.sleep(0.3)
        data = b""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not (b"{" in data and data.endswith(b"\n")):
            data += os.read(r, 65536)
        received.append(data[data.find(b"{") :])

    received: list[bytes] = []
    reader = threading.Thread(target=drain_later, daemon=True)
    reader.start()
    writer.emit("ready", listener=None)
    reader.join(10)
    assert writer.dropped == 0, "the 'ready' event was dropped although room was made"
    assert received and b'"kind": "ready"' in received[0]


def test_a_life_cycle_event_gives_up_after_its_wait(
    pipe: tuple[int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, w = pipe
    monkeypatch.setattr(events, "LIFECYCLE_WAIT", 0.2)
    writer = EventWriter(w, "worker", 0)
    fill(w)
    started = time.monotonic()
    writer.emit("exit", status=0)
    took = time.monotonic() - started
    assert writer.dropped == 1
    assert 0.15 < took < 5.0, f"waited {took:.2f}s, expected about 0.2s"


def test_reader_gets_every_event_of_a_flood(pipe: tuple[int, int]) -> None:
    """A reader draining while three writers flood: every 'ready' arrives."""
    r, w = pipe
    reader = EventReader(r)
    writers = [EventWriter(w, "worker", n) for n in range(3)]

    def flood(writer: EventWriter) -> None:
        for n in range(2000):
            writer.emit("serve-error", n=n, message="e" * 200)
        writer.emit("ready")

    threads = [threading.Thread(target=flood, args=(x,), daemon=True) for x in writers]
    for t in threads:
        t.start()
    ready: set[int] = set()
    deadline = time.monotonic() + 30
    while len(ready) < 3 and time.monotonic() < deadline:
        for ev in reader.drain(0.05):
            if ev.kind == "ready":
                ready.add(ev.index)
    for t in threads:
        t.join(10)
    assert ready == {0, 1, 2}, f"'ready' arrived from workers {sorted(ready)} only"
