"""Developer sessions: nox -s tests lint typecheck (more in the docs)."""

from __future__ import annotations

import nox

nox.options.sessions = ["lint", "typecheck", "tests"]
nox.options.error_on_missing_interpreters = False

PYTHONS = ["3.10", "3.11", "3.12", "3.13"]
REFERENCES = ["MasterProxy", "ForkSharedProxy", "ReusePortProxy"]


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    session.install("-e", ".[dev]")
    session.run("pytest", "-n", "2", *session.posargs)


@nox.session
def conformance(session: nox.Session) -> None:
    session.install("-e", ".[dev]")
    for name in REFERENCES:
        session.run(
            "pytest",
            "-n",
            "2",
            f"--fdpass-impl=reference:{name}",
            f"--fdpass-report=reports/{name}.json",
            *session.posargs,
        )


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff>=0.5")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    session.install("-e", ".[dev]")
    session.run("mypy", "--strict")
