"""The ``fdpass-bench`` command: what it prints, writes and refuses; never how fast anything is.

Timings belong to the bench's own report, measured side by side; a test that
asserted them would fail on a busy machine for no fault of the code. These
tests run a tiny configuration for real (forked servers, clients, the floor)
and check the shape and sanity of the result, the one-line errors, and that
nothing is left behind.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil
import pytest

from fdpass_conformance.bench import cli
from fdpass_conformance.bench.report import _clean, render_table
from fdpass_conformance.bench.stats import latency_summary, percentile, summary
from fdpass_conformance.harness import namespace

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="the bench forks servers and reads /proc"
)

TINY = [
    "--workers",
    "1",
    "--reps",
    "2",
    "--connections",
    "20",
    "--clients",
    "1",
    "--latency-samples",
    "5",
    "--burst",
    "5",
    "--no-progress",
]
IMPLS = ["reference:ForkSharedProxy", "reference:ReusePortProxy", "reference:MasterProxy"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One tiny in-process run of the default implementations, and what it left behind."""
    out = tmp_path_factory.mktemp("bench") / "report.json"
    code = cli.main([*TINY, "--json", str(out)])
    children = psutil.Process().children(recursive=True)
    return {
        "code": code,
        "report": json.loads(out.read_text()),
        "children": [c.pid for c in children if c.status() != psutil.STATUS_ZOMBIE],
    }


def test_tiny_run_succeeds_and_leaves_no_process(tiny_run: dict[str, Any]) -> None:
    assert tiny_run["code"] == 0
    assert tiny_run["children"] == [], "bench processes outlived the run"


def test_tiny_run_leaves_no_ipc_object(tiny_run: dict[str, Any]) -> None:
    """Each server master runs in an IPC namespace of its own: whatever the implementation
    creates there vanishes with its last process, and no process is left (test above)."""
    if not namespace.IPC_NAMESPACES:
        pytest.skip(
            "no IPC namespaces here; a global ipcs diff would race with concurrent test runs"
        )
    assert tiny_run["report"]["config"]["isolation"] == ["ipc-namespace"]


def test_json_has_every_implementation_with_positive_numbers(tiny_run: dict[str, Any]) -> None:
    report = tiny_run["report"]
    assert report["schema"] == "fdpass-bench/1"
    assert report["config"]["impls"] == IMPLS
    assert report["config"]["baseline"] == "reference:ForkSharedProxy"
    assert [r["impl"] for r in report["results"]] == IMPLS
    for r in report["results"]:
        assert r["errors"] == 0, r
        assert r["connections"] == 2 * 20, "each rep runs exactly --connections connections"
        assert len(r["reps"]) == 2
        assert r["connections_per_s"]["median"] > 0
        assert r["connections_per_s"]["min"] <= r["connections_per_s"]["max"]
        assert r["latency_us"]["n"] == 2 * 5
        assert 0 < r["latency_us"]["p50"] <= r["latency_us"]["p99"]
        assert r["ratio_vs_baseline"] > 0
        assert r["client_cpu_share"] > 0
        assert r["master_cpu_us_per_conn"] >= 0
    base, _, master = report["results"]
    assert base["baseline"] is True and master["baseline"] is False
    assert master["fd_passing"] is True and base["fd_passing"] is False
    assert master["master_cpu_us_per_conn"] > 0, "the dispatching master must use some CPU"
    assert master["burst_master_cpu_us_per_conn"] > 0
    assert base["burst_master_cpu_us_per_conn"] is None, "no burst for a kernel-dispatched proxy"
    floor = report["floor"]
    assert floor["fds_per_s"]["median"] > 0
    assert floor["fds"] == 2 * 20
    assert 0 < floor["latency_us"]["p50"] <= floor["latency_us"]["p99"]
    assert floor["sender_cpu_us_per_fd"] > 0
    assert report["machine"]["cpus"] >= 1


def test_json_is_strict_json_without_nan(tiny_run: dict[str, Any], tmp_path: Path) -> None:
    text = json.dumps(tiny_run["report"], allow_nan=False)  # would raise on NaN
    assert "NaN" not in text


def test_table_names_each_implementation_and_the_floor(tiny_run: dict[str, Any]) -> None:
    table = render_table(tiny_run["report"])
    for name in ("ForkSharedProxy (base)", "ReusePortProxy", "MasterProxy", "floor: send_fds"):
        assert name in table
    assert "dispatch latency overhead" in table


def test_the_baseline_is_added_when_not_named(tmp_path: Path) -> None:
    out = tmp_path / "one.json"
    code = cli.main([*TINY, "--reps", "1", "--impl", "reference:MasterProxy", "--json", str(out)])
    assert code == 0
    report = json.loads(out.read_text())
    assert report["config"]["impls"] == ["reference:ForkSharedProxy", "reference:MasterProxy"]


def test_command_line_entry_runs_and_prints_the_table(tmp_path: Path) -> None:
    """``python -m fdpass_conformance.bench``, as a user runs it (the ``main`` target)."""
    proc = subprocess.run(
        [sys.executable, "-m", "fdpass_conformance.bench", *TINY, "--reps", "1"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert proc.returncode == 0, proc.stderr
    assert "MasterProxy" in proc.stdout and "floor: send_fds" in proc.stdout
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    "argv",
    [
        ["--impl", "no_such_module_xyz:Proxy"],
        ["--impl", "reference:NoSuchProxy"],
        ["--impl", "reference"],
        ["--impl", "os:getcwd"],
        ["--workers", "0"],
        ["--workers", "two"],
        ["--reps", "-1"],
        ["--seconds", "0"],
        ["--seconds", "nan"],
        ["--connections", "0"],
        ["--seconds", "1", "--connections", "5"],
        ["--clients", "0"],
        ["--latency-samples", "x"],
        ["--burst", "-3"],
        ["--dispatch-timeout", "-1"],
        ["--json", "/nonexistent-dir-xyz/report.json"],
        ["--no-such-option"],
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("fdpass-bench: error: ")
    assert "Traceback" not in captured.err
    assert captured.out == ""


def test_bad_input_exit_status_from_the_command_line() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "fdpass_conformance.bench", "--workers", "zero"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


def test_plot_without_matplotlib_says_how_to_install(capsys: pytest.CaptureFixture[str]) -> None:
    if importlib.util.find_spec("matplotlib") is not None:
        pytest.skip("matplotlib is installed here")
    assert cli.main(["--plot", "chart.png"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install matplotlib" in err


def test_plot_is_written_when_matplotlib_is_installed(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    out = tmp_path / "chart.png"
    assert cli.main([*TINY, "--reps", "1", "--plot", str(out)]) == 0
    assert out.read_bytes().startswith(b"\x89PNG")


# -- the small helpers ---------------------------------------------------------------


def test_percentile_interpolates_and_handles_no_values() -> None:
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([5.0], 99) == 5.0
    assert math.isnan(percentile([], 50))


def test_summaries_ignore_nan_and_convert_to_microseconds() -> None:
    assert summary([3.0, math.nan, 1.0, 2.0]) == {"median": 2.0, "min": 1.0, "max": 3.0}
    assert math.isnan(summary([math.nan])["median"])
    lat = latency_summary([10e-6, 20e-6, 30e-6])
    assert lat["n"] == 3 and abs(lat["p50"] - 20.0) < 1e-9


def test_clean_turns_nan_and_infinity_into_null() -> None:
    assert _clean({"a": [math.nan, 1.0, math.inf], "b": (2.0,)}) == {
        "a": [None, 1.0, None],
        "b": [2.0],
    }


# -- the latency breakdown command ----------------------------------------------------


def test_breakdown_runs_a_tiny_configuration(capsys: pytest.CaptureFixture[str]) -> None:
    from fdpass_conformance.bench import breakdown

    assert breakdown.main(["--connections", "5", "--reps", "1", "--workers", "1"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    numbers = [float(x) for x in out[-1].replace("|", " ").split()]
    # Stage differences (e.g. "worker" minus "master") can be negative on a
    # handful of noisy samples; only their presence and finiteness are checked.
    assert len(numbers) == 7 and all(math.isfinite(v) for v in numbers), out
    assert psutil.Process().children(recursive=True) == []


@pytest.mark.parametrize(
    "argv",
    [["--impl", "reference:ForkSharedProxy"], ["--connections", "0"], ["--impl", "nope:X"]],
)
def test_breakdown_bad_input_is_one_line_and_exit_2(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    from fdpass_conformance.bench import breakdown

    assert breakdown.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("fdpass-bench-breakdown: error: ")


@pytest.mark.parametrize(
    "spec",
    [
        "fdpass_conformance.bench.minimal:MinimalMasterProxy",
        "fdpass_conformance.bench.variants:bounded_master",
        "fdpass_conformance.bench.variants:bounded_master_inflight2",
        "fdpass_conformance.bench.variants:RoundRobinMasterProxy",
    ],
)
def test_yardsticks_and_variants_load_as_fd_passing_impls(spec: str) -> None:
    from fdpass_conformance.loading import load_impl

    assert load_impl(spec).fd_passing
