"""Coverage reaches every kind of process the toolkit runs code in.

The toolkit's code runs in forked children that leave with ``os._exit``
(server masters, workers, helpers), in subprocesses (xdist workers, inner
pytest runs), and after ``os.fork()`` inside the forking function itself.
This runs a small program with each of those under ``coverage run`` with the
project's coverage configuration (pyproject's ``[tool.coverage.run]``, or
the recommended one while pyproject has none), combines, and checks that
every line that ran was recorded.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import coverage
import pytest

ROOT = Path(__file__).resolve().parent.parent

#: What docs/development.md recommends, used while pyproject.toml has no coverage section.
RECOMMENDED: dict[str, Any] = {
    "parallel": True,
    "concurrency": ["thread"],
    "patch": ["subprocess", "_exit"],
    "sigterm": True,
}

PROGRAM = """\
import os
import subprocess
import sys


def in_child():
    return "child"  # CHILD


def in_subprocess():
    return "subprocess"  # SUBPROCESS


def main():
    pid = os.fork()
    if pid == 0:
        in_child()
        os._exit(0)  # AFTER_FORK
    os.waitpid(pid, 0)
    code = "import probe; probe.in_subprocess()"
    subprocess.run([sys.executable, "-c", code], check=True)
    grandparent = os.fork()
    if grandparent == 0:
        inner = os.fork()
        if inner == 0:
            in_child()
            os._exit(0)  # GRANDCHILD
        os.waitpid(inner, 0)
        os._exit(0)
    os.waitpid(grandparent, 0)


if __name__ == "__main__":
    main()
"""


def project_run_config() -> dict[str, Any]:
    pyproject = ROOT / "pyproject.toml"
    if sys.version_info >= (3, 11):
        import tomllib

        with pyproject.open("rb") as fh:
            data = tomllib.load(fh)
        run: dict[str, Any] | None = data.get("tool", {}).get("coverage", {}).get("run")
        if run is not None:
            return run
    return RECOMMENDED


def toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return f'"{value}"'


def line_of(marker: str) -> int:
    return next(n for n, line in enumerate(PROGRAM.splitlines(), 1) if f"# {marker}" in line)


@pytest.mark.timeout(120)
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forks_exits_and_subprocesses_are_all_measured(tmp_path: Path) -> None:
    config = {k: v for k, v in project_run_config().items() if k not in ("source", "omit")}
    patches = config.get("patch", [])
    assert "_exit" in patches, "forked children leave with os._exit: patch must include _exit"
    assert "subprocess" in patches, "xdist workers are subprocesses: patch must include it"
    (tmp_path / "probe.py").write_text(PROGRAM, encoding="utf-8")
    settings = "\n".join(f"{key} = {toml_value(value)}" for key, value in config.items())
    rc = tmp_path / "coverage.toml"
    rc.write_text(f'[tool.coverage.run]\nsource = ["probe"]\n{settings}\n', encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("COVERAGE_")}
    env["COVERAGE_FILE"] = str(tmp_path / ".coverage")
    env["PYTHONPATH"] = str(tmp_path)
    cmd = [sys.executable, "-m", "coverage", "run", f"--rcfile={rc}", "-m", "probe"]
    subprocess.run(cmd, cwd=tmp_path, env=env, check=True, timeout=60, capture_output=True)
    combine = [sys.executable, "-m", "coverage", "combine", f"--rcfile={rc}", "-q"]
    subprocess.run(combine, cwd=tmp_path, env=env, check=True, timeout=60, capture_output=True)

    data = coverage.CoverageData(str(tmp_path / ".coverage"))
    data.read()
    [measured] = [f for f in data.measured_files() if f.endswith("probe.py")]
    lines = set(data.lines(measured) or [])
    for marker in ("CHILD", "SUBPROCESS", "AFTER_FORK", "GRANDCHILD"):
        assert line_of(marker) in lines, f"the {marker} line ran but was not measured"
