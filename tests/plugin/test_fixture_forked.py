"""fdpass_forked_workers: results, tracebacks, deadlines, kills, and nothing left behind."""

from __future__ import annotations

import os
import sys
import textwrap

import pytest

from .helpers import INNER_TIMEOUT

pytestmark = pytest.mark.timeout(120)

USES_FORKED = """
import atexit
import os
import pathlib
import signal
import sys
import time

import psutil
import pytest

from fdpass_conformance.processes import ChildFailed, fork_workers

LOG = pathlib.Path("events.log")
STUCK = []
LEFT = []


def log(line):
    with LOG.open("a") as f:
        f.write(line + "\\n")


atexit.register(log, "atexit")


def alive(pid):
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture
def teardown_logger():
    yield
    log(f"teardown {os.getpid()}")


def test_results(fdpass_forked_workers, teardown_logger):
    group = fdpass_forked_workers(3, lambda i: (i, os.getpid(), os.getpgrp(), os.getppid()))
    results = group.results(timeout=10)
    assert [r.index for r in results] == [0, 1, 2]
    assert len(set(group.pids)) == 3
    for i, (r, pid) in enumerate(zip(results, group.pids)):
        assert r.ok and r.returncode == 0 and r.pid == pid
        assert r.get() == (i, pid, pid, os.getpid())  # its own process group
        assert pid != os.getpgrp()


def nested_failure(i):
    raise ValueError(f"child {i} failed on purpose")


def test_exception_comes_back_with_its_traceback(fdpass_forked_workers):
    (r,) = fdpass_forked_workers(1, nested_failure).results(timeout=10)
    assert (r.outcome, r.returncode, r.value) == ("raised", 1, None)
    assert r.error.type == "ValueError"
    assert r.error.message == "child 0 failed on purpose"
    assert 'in nested_failure\\n    raise ValueError(f"child {i} failed' in r.error.traceback
    assert r.error.traceback.rstrip().endswith("ValueError: child 0 failed on purpose")
    with pytest.raises(ChildFailed, match="(?s)raised ValueError.*in nested_failure"):
        r.get()


def test_unpicklable_result_is_an_error(fdpass_forked_workers):
    (r,) = fdpass_forked_workers(1, lambda i: lambda: None).results(timeout=10)
    assert r.outcome == "raised" and "cannot be pickled" in r.error.message


def test_stuck_child_is_named(fdpass_forked_workers):
    group = fdpass_forked_workers(3, lambda i: time.sleep(60) if i == 1 else i)
    start = time.monotonic()
    with pytest.raises(TimeoutError) as info:
        group.results(timeout=0.5)
    assert 0.4 < time.monotonic() - start < 5
    message = str(info.value)
    assert f"child 1 (pid {group.pids[1]})" in message
    assert "child 0" not in message and "child 2" not in message
    STUCK.append(group.pids[1])


def test_group_deadline_is_the_default_timeout(fdpass_forked_workers):
    group = fdpass_forked_workers(1, lambda i: time.sleep(60), deadline=0.5)
    with pytest.raises(TimeoutError, match=f"child 0 [(]pid {group.pids[0]}[)]"):
        group.results()


def test_kill_and_python_handlers_are_reset(fdpass_forked_workers):
    ready_r, ready_w = os.pipe()

    def sleeper(i):
        os.write(ready_w, b"r")
        time.sleep(60)

    previous = signal.signal(signal.SIGTERM, lambda *args: None)
    try:
        group = fdpass_forked_workers(1, sleeper)
        assert os.read(ready_r, 1) == b"r"
        group.kill(0, signal.SIGTERM)
        (r,) = group.results(timeout=10)
    finally:
        signal.signal(signal.SIGTERM, previous)
        os.close(ready_r)
        os.close(ready_w)
    assert (r.outcome, r.returncode) == ("died", -signal.SIGTERM)
    with pytest.raises(ChildFailed, match="killed by SIGTERM"):
        r.get()
    with pytest.raises(ProcessLookupError, match="already reaped"):
        group.kill(0)


def test_teardown_kills_children_and_their_groups(fdpass_forked_workers):
    pids_r, pids_w = os.pipe()

    def with_grandchild(i):
        grandchild = os.fork()
        if grandchild == 0:
            time.sleep(60)
            os._exit(0)
        os.write(pids_w, f"{grandchild}\\n".encode())
        time.sleep(60)

    group = fdpass_forked_workers(2, with_grandchild)
    with os.fdopen(pids_r) as pipe:
        os.close(pids_w)
        grandchildren = [int(pipe.readline()) for _ in range(2)]
    LEFT.extend(group.pids + grandchildren)
    assert all(alive(pid) for pid in LEFT)


def test_nothing_is_left_after_teardown():
    try:
        assert len(LEFT) == 4 and len(STUCK) == 1
        assert psutil.Process().children(recursive=True) == []
        deadline = time.monotonic() + 5
        while any(alive(pid) for pid in LEFT + STUCK) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [pid for pid in LEFT + STUCK if alive(pid)] == []
    finally:  # if teardown failed, the grandchildren (no PDEATHSIG) would outlive the run
        for pid in LEFT + STUCK:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def middle(i):
    ready_r, ready_w = os.pipe()

    def orphan(j):
        os.write(ready_w, b"r")
        time.sleep(60)

    inner = fork_workers(1, orphan)
    assert os.read(ready_r, 1) == b"r"
    return inner.pids[0]  # leaves without reaping it: only PDEATHSIG can stop it


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG")
def test_children_die_with_their_parent(fdpass_forked_workers):
    (r,) = fdpass_forked_workers(1, middle).results(timeout=10)
    orphan = r.get()
    try:
        deadline = time.monotonic() + 5
        while alive(orphan) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(orphan)
    finally:
        if alive(orphan):
            os.kill(orphan, signal.SIGKILL)


def test_children_never_run_teardown_or_atexit(fdpass_forked_workers, teardown_logger):
    fdpass_forked_workers(2, lambda i: log(f"child {i}")).results(timeout=10)


def test_parent_buffers_are_written_once(fdpass_forked_workers):
    sys.stdout.write("PARENT-UNFLUSHED ")
    fdpass_forked_workers(2, lambda i: print(f"CHILD-{i}-OUTPUT")).results(timeout=10)
"""


def test_forked_workers(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    pytester.makepyfile(test_forked=USES_FORKED)
    # Buffered stdout, so that a parent buffer copied into the children would show twice.
    monkeypatch.delenv("PYTHONUNBUFFERED", raising=False)
    result = pytester.runpytest_subprocess("-s", "-v", timeout=INNER_TIMEOUT)
    result.assert_outcomes(passed=11)
    inner_pid = [
        line.split()[1]
        for line in (pytester.path / "events.log").read_text().splitlines()
        if line.startswith("teardown ")
    ]
    events = (pytester.path / "events.log").read_text().split("\n")
    assert sorted(events) == sorted(
        ["child 0", "child 1", "atexit", *[f"teardown {pid}" for pid in inner_pid], ""]
    )
    assert len(inner_pid) == 2 and len(set(inner_pid)) == 1
    output = result.stdout.str()
    assert output.count("PARENT-UNFLUSHED") == 1
    assert output.count("CHILD-0-OUTPUT") == output.count("CHILD-1-OUTPUT") == 1


def test_fork_workers_outside_pytest(pytester: pytest.Pytester) -> None:
    script = textwrap.dedent(
        """
        import time
        import psutil
        from fdpass_conformance.processes import fork_workers

        with fork_workers(2, lambda i: i * 10, deadline=10) as group:
            print("VALUES", [r.get() for r in group.results()])
        with fork_workers(1, lambda i: time.sleep(60)):
            pass
        print("CHILDREN", psutil.Process().children(recursive=True))
        """
    )
    result = pytester.run(sys.executable, "-c", script, timeout=INNER_TIMEOUT)
    assert result.ret == 0, result.stderr.str()
    result.stdout.fnmatch_lines(["VALUES [[]0, 10[]]", "CHILDREN [[][]]"])


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_results_outside_the_owner_is_refused(pytester: pytest.Pytester) -> None:
    script = textwrap.dedent(
        """
        import os
        from fdpass_conformance.processes import fork_workers

        with fork_workers(1, lambda i: i, deadline=10) as group:
            outer = group

            def peek(i):
                try:
                    outer.results()
                except RuntimeError as exc:
                    return str(exc)
                return "allowed"

            with fork_workers(1, peek) as other:
                print("PEEK", other.results()[0].get())
        """
    )
    result = pytester.run(sys.executable, "-c", script, timeout=INNER_TIMEOUT)
    assert result.ret == 0, result.stderr.str()
    result.stdout.fnmatch_lines(
        ["PEEK WorkerGroup.results() called outside the process that forked it"]
    )
