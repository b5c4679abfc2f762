"""Developer sessions; ``nox`` alone runs lint, typecheck and tests.

* ``tests``: the toolkit's own tests on every CPython 3.10-3.13 installed
  here; a missing interpreter is skipped, never downloaded.
* ``conformance``: the contract suites against each reference proxy, one
  JSON report and one JUnit file per proxy in ``reports/``.
* ``lint``, ``typecheck``: ruff, and mypy --strict (the example downstream
  project included).
* ``docs``: ``mkdocs build --strict`` of the documentation site.
* ``coverage``: the tests under coverage, in every process (pytest, xdist
  workers, forked masters and workers), combined and held to ``fail_under``.
* ``bench``: ``python -m fdpass_conformance.bench`` with its defaults.

Linux suites see the most as root (IPC namespaces, strace); see
docs/troubleshooting.md for what is skipped otherwise.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import nox

nox.options.sessions = ["lint", "typecheck", "tests"]
nox.options.error_on_missing_interpreters = False
if hasattr(nox.options, "download_python"):
    # A missing CPython is a skip, not a download (CI machines reach PyPI only).
    nox.options.download_python = "never"

ROOT = Path(__file__).resolve().parent
PYTHONS = ["3.10", "3.11", "3.12", "3.13"]


def _pyenv_pythons_on_path() -> None:
    """Put pyenv's installed CPythons on PATH ahead of its shims.

    A shim runs only the versions selected with ``pyenv global``/``local``;
    the real binaries under ``$PYENV_ROOT/versions/X.Y.Z/bin`` let nox find
    every installed version. Nothing changes where pyenv is absent (CI).
    """
    versions = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    found: dict[str, tuple[tuple[int, ...], Path]] = {}
    for path in versions.glob("*/bin") if versions.is_dir() else ():
        match = re.fullmatch(r"(\d+)\.(\d+)\.(\d+)", path.parent.name)
        if match and f"{match[1]}.{match[2]}" in PYTHONS:
            key, patch = f"{match[1]}.{match[2]}", tuple(int(g) for g in match.groups())
            if key not in found or patch > found[key][0]:
                found[key] = (patch, path)
    if found:
        dirs = [str(path) for _, path in sorted(found.values())]
        os.environ["PATH"] = os.pathsep.join([*dirs, os.environ.get("PATH", "")])


_pyenv_pythons_on_path()
REFERENCES = ["MasterProxy", "ForkSharedProxy", "ReusePortProxy"]
REPORTS = ROOT / "reports"
EXAMPLE = ROOT / "examples" / "downstream"
#: What the ``docs`` extra installs; used as is while pyproject.toml has no such extra.
DOCS_REQUIREMENTS = ["mkdocs>=1.6", "mkdocs-material>=9.5", "mkdocstrings[python]>=0.29"]


def _pyproject() -> dict[str, object]:
    data: dict[str, object] = nox.project.load_toml(ROOT / "pyproject.toml")
    return data


def _has_extra(name: str) -> bool:
    project = _pyproject().get("project", {})
    extras = project.get("optional-dependencies", {}) if isinstance(project, dict) else {}
    return isinstance(extras, dict) and name in extras


def _has_coverage_config() -> bool:
    tool = _pyproject().get("tool", {})
    coverage = tool.get("coverage", {}) if isinstance(tool, dict) else {}
    return isinstance(coverage, dict) and "run" in coverage


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    """The toolkit's own tests (pytest -n 2); extra arguments go to pytest."""
    session.install("-e", ".[dev]")
    session.run("pytest", "-n", "2", *session.posargs)


@nox.session
def conformance(session: nox.Session) -> None:
    """Each reference proxy through the contract suites; reports in reports/."""
    session.install("-e", ".[dev]")
    REPORTS.mkdir(exist_ok=True)
    failed: list[str] = []
    for name in REFERENCES:
        report = REPORTS / f"{name}.json"
        report.unlink(missing_ok=True)
        session.run(
            "pytest",
            "-n",
            "2",
            f"--fdpass-impl=reference:{name}",
            f"--fdpass-report={report}",
            f"--junitxml={REPORTS / f'{name}.junit.xml'}",
            *session.posargs,
            success_codes=[0, 1],
        )
        if not report.is_file():
            failed.append(f"{name}: no report written")
            continue
        data = json.loads(report.read_text(encoding="utf-8"))
        bad = [
            r["id"]
            for impl in data["implementations"]
            for r in impl["requirements"]
            if r["verdict"] == "fail"
        ]
        if bad or not data["passed"]:
            failed.append(f"{name}: {', '.join(bad) or 'failed'}")
    if failed:
        session.error("reference proxies failing the contract: " + "; ".join(failed))


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff>=0.5")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    session.install("-e", ".[dev]")
    session.run("mypy", "--strict")
    session.run(
        "mypy",
        "--strict",
        str(EXAMPLE / "acme_proxy"),
        str(EXAMPLE / "acme_proxy_broken"),
        str(EXAMPLE / "tests"),
        env={"MYPYPATH": str(EXAMPLE)},
    )


@nox.session
def docs(session: nox.Session) -> None:
    """Build the documentation site into site/, failing on any warning."""
    if _has_extra("docs"):
        session.install("-e", ".[docs]")
    else:
        session.install("-e", ".", *DOCS_REQUIREMENTS)
    session.run("mkdocs", "build", "--strict", *session.posargs)


@nox.session
def coverage(session: nox.Session) -> None:
    """Coverage of every process: pytest, xdist workers, forked masters and workers.

    The configuration is pyproject.toml's [tool.coverage.*]: ``patch =
    ["subprocess", "_exit"]`` makes xdist workers and inner pytest runs
    measure themselves, and forked children save their data before
    ``os._exit`` (coverage gives each forked pid its own data file by
    itself). ``COVERAGE_FILE`` is absolute so that processes started in
    temporary directories write where ``combine`` looks.
    """
    if not _has_coverage_config():
        session.error("pyproject.toml has no [tool.coverage.run] section (see docs/development.md)")
    session.install("-e", ".[dev]")
    env = {"COVERAGE_FILE": str(ROOT / ".coverage")}
    session.run("coverage", "erase", env=env)
    session.run("coverage", "run", "-m", "pytest", "-n", "2", *session.posargs, env=env)
    session.run("coverage", "combine", "--quiet", env=env)
    torn = sorted(ROOT.glob(".coverage.*"))  # left by combine: unreadable, written while killed
    for path in torn:
        path.unlink()
    if torn:
        session.log(f"dropped {len(torn)} data files of processes killed while saving them")
    session.run("coverage", "html", "--quiet", "--fail-under=0", env=env)  # htmlcov/, always
    session.run("coverage", "report", env=env)  # the gate: fail_under


@nox.session
def bench(session: nox.Session) -> None:
    """The benchmark with its defaults; extra arguments go to it."""
    if not (ROOT / "fdpass_conformance" / "bench" / "__main__.py").is_file():
        session.skip("fdpass_conformance.bench does not exist yet in this checkout")
    session.install("-e", ".[dev]")
    session.run("python", "-m", "fdpass_conformance.bench", *session.posargs)


@nox.session
def corpus(session: nox.Session) -> None:
    """Only the known-bad corpus (also part of ``tests``): each defect caught, nothing else."""
    session.install("-e", ".[dev]")
    session.run("pytest", "-q", "tests/test_known_bad.py", *session.posargs)
