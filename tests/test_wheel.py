"""The built wheel, as a user gets it: no generic top-level name, the references still there.

Builds the wheel from this checkout, installs it (with its dependencies, from
the configured index) into a new venv outside the repository, and runs one
requirement with ``--fdpass-impl=reference:MasterProxy`` from a directory
that has no ``reference`` of its own.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from fdpass_conformance.catalogue import REQUIREMENTS

ROOT = Path(__file__).resolve().parent.parent
#: Building, installing the dependencies and one contract test: about 10 s with a warm pip cache.
STEP_TIMEOUT = 300

pytestmark = pytest.mark.timeout(3 * STEP_TIMEOUT)


def step(argv: list[str], cwd: Path, what: str) -> str:
    proc = subprocess.run(
        argv, cwd=cwd, capture_output=True, text=True, timeout=STEP_TIMEOUT, check=False
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{what} failed (exit {proc.returncode}):\n{out[-3000:]}"
    return out


def test_wheel_installs_no_top_level_reference_and_runs_it(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    step(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dist), str(ROOT)],
        tmp_path,
        "building the wheel",
    )
    (wheel,) = dist.glob("fdpass_conformance-*.whl")
    tops = {name.split("/", 1)[0] for name in zipfile.ZipFile(wheel).namelist()}
    assert {t for t in tops if not t.startswith("fdpass_conformance")} == set(), tops
    names = zipfile.ZipFile(wheel).namelist()
    assert "fdpass_conformance/reference/master.py" in names
    assert "fdpass_conformance/spec.md" in names  # the HTML report quotes it

    venv = tmp_path / "venv"
    step([sys.executable, "-m", "venv", str(venv)], tmp_path, "creating the venv")
    python = str(venv / "bin" / "python")
    step([python, "-m", "pip", "install", "-q", str(wheel)], tmp_path, "installing the wheel")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    probe = subprocess.run(
        [python, "-c", "import reference"], cwd=elsewhere, capture_output=True, text=True
    )
    assert probe.returncode != 0 and "No module named 'reference'" in probe.stderr, probe
    count = "from fdpass_conformance.report.spec import sections; print(len(sections()))"
    spec = subprocess.run(
        [python, "-c", count], cwd=elsewhere, capture_output=True, text=True, check=False
    )
    assert spec.stdout.strip() == str(len(REQUIREMENTS)), spec

    out = step(
        [
            python,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "--fdpass-impl=reference:MasterProxy",
            "--fdpass-only=SP-01",
        ],
        elsewhere,
        "the gate of the installed wheel",
    )
    assert "SP-01   MUST   pass" in out, out
    assert "1 passed" in out, out
