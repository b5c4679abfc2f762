"""The example programs under examples/, built and run through the whole toolkit.

Each good example passes every MUST under ``-n 2``; each broken twin fails
exactly the requirements it breaks; a program that dies mid-run gives one
clear line, not a hang; and nothing of any run is left (processes, queues).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped, unused-ignore]
import pytest

pytestmark = pytest.mark.timeout(600)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
C_DIR = EXAMPLES / "c-masterproxy"
#: The proxy and the kit it runs on.
C_SOURCES = [C_DIR / "masterproxy.c", C_DIR / "fdpass_adapter.c"]
PHP_DIR = EXAMPLES / "php-masterproxy"
#: A third-party-style PHP library (unmodified) and its wrapper on the PHP kit.
ACME_DIR = EXAMPLES / "php" / "acme-proxy"
#: How long a wrapper of a PHP proxy library may be, on top of the kit (issue 15).
WRAPPER_LINES = 120
CC = shutil.which("cc")
PHP = shutil.which("php")
PHP_EXTENSIONS = {"sockets", "sysvmsg", "pcntl", "posix"}

#: What -DBROKEN_NO_ERRNO breaks: error replies carry no errno (as from a library whose
#: exceptions have none), so every requirement that names the errno of a failure fails,
#: each on its own check (FLT-01 compares the errno of a failed sendmsg too, and FLT-05's
#: dispatch-outcome invariant applies FLT-01's rule to the faults it injects); nothing is
#: blocked and nothing else fails.
C_NO_ERRNO_BREAKS = {"SP-08", "SP-18", "IPC-06", "FLT-01", "FLT-02", "FLT-04", "FLT-05"}
#: What -DBROKEN_NO_CLOEXEC breaks: received connections are inheritable.
C_TWIN_BREAKS = {"FP-05", "SP-20"}
#: What masterproxy-broken.php breaks: the seed's 0666 queue.
PHP_TWIN_BREAKS = {"IPC-05"}
#: What PHP's bindings cannot do right, good example or not: ext/sysvmsg's
#: msg_get_queue() retries a failed msgget() and reports only strerror() text of
#: a second failure, so a single injected msgget failure is absorbed. The suites
#: now skip that case of SP-18 and SP-19; a suite that judged it would fail them.
#: Nothing else may fail.
PHP_BINDING_LIMITS = {"SP-18", "SP-19"}


def _php_reason() -> str:
    if PHP is None:
        return "php is not installed (apt-get install -y php8.2-cli)"
    modules = subprocess.run([PHP, "-m"], capture_output=True, text=True, timeout=30).stdout
    missing = PHP_EXTENSIONS - {m.strip().lower() for m in modules.splitlines()}
    return f"php lacks the extensions {', '.join(sorted(missing))}" if missing else ""


needs_cc = pytest.mark.skipif(CC is None, reason="needs a C compiler (cc)")
needs_php = pytest.mark.skipif(bool(_php_reason()), reason=_php_reason() or "php is ready")


def build(out: Path, *flags: str, sources: list[Path] = C_SOURCES) -> Path:
    """A C program on the kit, compiled warning-free (-Wall -Werror) with ``flags``."""
    assert CC is not None
    done = subprocess.run(
        [CC, "-O2", "-Wall", "-Werror", *flags, "-o", str(out), *map(str, sources)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and not done.stderr.strip(), f"cc {flags}: {done.stderr}"
    return out


def run_suites(
    pytester: pytest.Pytester, impl: str, *extra: str
) -> tuple[pytest.RunResult, dict[str, Any], float]:
    """The conformance run of ``impl`` in a subprocess: (result, report, seconds)."""
    started = time.monotonic()
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "-n", "2", f"--fdpass-impl={impl}",
        "--fdpass-report=report.json", *extra,
        timeout=540,
    )  # fmt: skip
    took = time.monotonic() - started
    report = json.loads((pytester.path / "report.json").read_text())
    return result, report, took


def failed(report: dict[str, Any]) -> set[str]:
    """Requirement IDs with result "fail" (a SHOULD among them is a warning)."""
    return {
        r["id"]
        for impl in report["implementations"]
        for r in impl["requirements"]
        if r["result"] == "fail"
    }


def musts_failed(report: dict[str, Any]) -> set[str]:
    return {
        r["id"]
        for impl in report["implementations"]
        for r in impl["requirements"]
        if r["result"] == "fail" and r["level"] == "MUST"
    }


def assert_nothing_left(marker: str) -> None:
    """No process whose command line contains ``marker`` survived the run."""
    left = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if marker in cmdline:
            left.append(f"{proc.info['pid']}: {cmdline}")
            proc.kill()
    assert not left, f"processes of the run survived (now killed): {left}"


def summary_line(result: pytest.RunResult, req: str) -> str:
    rows = [line for line in result.outlines if re.match(rf"{req} +(MUST|SHOULD) ", line)]
    assert len(rows) == 1, f"no single summary row for {req}: {rows}"
    return rows[0]


@needs_cc
def test_c_example_passes_every_must(pytester: pytest.Pytester) -> None:
    binary = build(pytester.path / "masterproxy")
    result, report, _ = run_suites(pytester, f"exec:{binary}")
    assert musts_failed(report) == set(), result.stdout.str()[-3000:]
    assert failed(report) == set(), "a SHOULD failed too"
    assert result.ret == 0
    assert "fdpass: implementations: c-masterproxy: c, adapter protocol 2" in result.outlines
    assert_nothing_left(str(binary))


@needs_cc
def test_c_broken_twin_fails_exactly_its_requirements(pytester: pytest.Pytester) -> None:
    binary = build(pytester.path / "masterproxy-broken", "-DBROKEN_NO_CLOEXEC")
    result, report, _ = run_suites(pytester, f"exec:{binary}")
    assert failed(report) == C_TWIN_BREAKS, result.stdout.str()[-3000:]
    assert result.ret == 1
    assert "the worker received an inheritable socket" in summary_line(result, "FP-05")
    assert_nothing_left(str(binary))


@needs_cc
def test_c_program_without_errnos_fails_exactly_the_errno_requirements(
    pytester: pytest.Pytester,
) -> None:
    binary = build(pytester.path / "masterproxy-no-errno", "-DBROKEN_NO_ERRNO")
    result, report, _ = run_suites(pytester, f"exec:{binary}")
    assert failed(report) == C_NO_ERRNO_BREAKS, result.stdout.str()[-3000:]
    others = {
        r["id"]: r["result"]
        for impl in report["implementations"]
        for r in impl["requirements"]
        if r["result"] in ("blocked", "error")
    }
    assert not others, f"blocked or toolkit errors: {others}"
    assert "errno is None, not EADDRINUSE" in summary_line(result, "SP-08")
    assert_nothing_left(str(binary))


@needs_cc
def test_c_master_that_never_reaps_fails_exactly_sp21(pytester: pytest.Pytester) -> None:
    binary = build(pytester.path / "masterproxy-no-reap", "-DBROKEN_NO_REAP")
    result, report, _ = run_suites(pytester, f"exec:{binary}")
    assert failed(report) == {"SP-21"}, result.stdout.str()[-3000:]
    assert "still a zombie" in summary_line(result, "SP-21")
    assert_nothing_left(str(binary))


@needs_cc
def test_a_program_dying_mid_run_is_one_clear_line(pytester: pytest.Pytester) -> None:
    binary = build(pytester.path / "masterproxy-exit3", "-DEXIT_ON_REQUEST=3")
    result, report, took = run_suites(pytester, f"exec:{binary}", "--fdpass-only=SP-09")
    assert result.ret == 1
    assert took < 120, f"the run took {took:.0f}s: something waited for a dead program"
    row = summary_line(result, "SP-09")
    assert "ProgramError: exec program 'c-masterproxy' master (pid " in row, row
    assert (
        "ended during 'fork_worker' (exit status 3; stderr: masterproxy: exiting on "
        "request 3 as compiled)"
    ) in row, row
    assert failed(report) == {"SP-09"}
    assert_nothing_left(str(binary))


@needs_cc
def test_a_program_master_releasing_a_dead_workers_channel_passes(
    pytester: pytest.Pytester,
) -> None:
    """After an injected EPIPE the master closes that worker's channel end and the
    program worker leaves on EOF, cleanly: no violation. Its zombie (the program's
    child, not ours) once read as "0 fds, expected 5" (worker-fds-flat)."""
    binary = build(pytester.path / "masterproxy-release", "-DRELEASE_DEAD_WORKERS")
    result, report, _ = run_suites(pytester, f"exec:{binary}", "--fdpass-only=FLT-01,FLT-05")
    assert failed(report) == set(), result.stdout.str()[-3000:]
    assert result.ret == 0
    assert_nothing_left(str(binary))


@needs_cc
def test_a_program_worker_that_quits_fails_workers_alive(pytester: pytest.Pytester) -> None:
    """A program's worker is a child of the program: its end is read from the harness
    worker that drove it, and named as the root cause (not as its fds gone to zero)."""
    binary = build(pytester.path / "masterproxy-quits", "-DBROKEN_QUIT_AFTER=3")
    result, report, _ = run_suites(pytester, f"exec:{binary}", "--fdpass-only=FLT-05")
    assert failed(report) == {"FLT-05"}, result.stdout.str()[-3000:]
    row = summary_line(result, "FLT-05")
    assert "workers-alive: worker(s) exited without being killed" in row, row
    assert_nothing_left(str(binary))


def test_a_shared_listener_program_passes_sp(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The adapter's worker path without fd passing: workers accept on the inherited listener."""
    monkeypatch.setenv("FAKE_MODE", "ok")
    program = Path(__file__).with_name("fake_program.py")
    impl = f"exec:{sys.executable} {program}"
    result, report, _ = run_suites(pytester, impl, "--fdpass-only=SP")
    assert failed(report) == set(), result.stdout.str()[-3000:]
    assert result.ret == 0
    assert_nothing_left(str(program))


@needs_php
def test_php_example_passes_every_must_php_allows(pytester: pytest.Pytester) -> None:
    impl = f"exec:{PHP} {PHP_DIR / 'masterproxy.php'}"
    result, report, _ = run_suites(pytester, impl)
    assert failed(report) <= PHP_BINDING_LIMITS, result.stdout.str()[-3000:]
    header = "fdpass: implementations: php-masterproxy: php, adapter protocol 2"
    assert header in result.outlines
    assert_nothing_left(str(PHP_DIR / "masterproxy.php"))


@needs_php
def test_php_broken_twin_fails_exactly_its_requirements(pytester: pytest.Pytester) -> None:
    impl = f"exec:{PHP} {PHP_DIR / 'masterproxy-broken.php'}"
    result, report, _ = run_suites(pytester, impl)
    assert failed(report) - PHP_BINDING_LIMITS == PHP_TWIN_BREAKS, result.stdout.str()[-3000:]
    assert result.ret == 1
    assert "mode=0666" in summary_line(result, "IPC-05")
    assert_nothing_left(str(PHP_DIR / "masterproxy-broken.php"))


@needs_php
def test_a_wrapped_third_party_php_class_passes_every_requirement_that_applies(
    pytester: pytest.Pytester,
) -> None:
    """The library is shared-listener: SP applies, FP and IPC are n/a; nothing fails."""
    wrapper = ACME_DIR / "fdpass-wrapper.php"
    result, report, _ = run_suites(pytester, f"exec:{PHP} {wrapper}")
    assert failed(report) == set(), result.stdout.str()[-3000:]
    assert result.ret == 0
    [impl] = report["implementations"]
    verdicts = {r["id"]: r["result"] for r in impl["requirements"]}
    assert {rid for rid, v in verdicts.items() if rid.startswith("SP-") and v != "pass"} == {
        "SP-15"  # no SO_REUSEPORT: n/a
    }, verdicts
    assert "fdpass: implementations: acme-forking-proxy: php, adapter protocol 2" in (
        result.outlines
    )
    assert_nothing_left(str(wrapper))


def test_the_third_party_wrapper_is_small_and_the_library_untouched() -> None:
    wrapper = (ACME_DIR / "fdpass-wrapper.php").read_text(encoding="utf-8")
    assert len(wrapper.splitlines()) <= WRAPPER_LINES
    library = (ACME_DIR / "ForkingProxy.php").read_text(encoding="utf-8")
    assert "Fdpass" not in library and "require" not in library, "the library uses the kit"
    assert "require __DIR__ . '/../fdpass_adapter.php';" in wrapper
