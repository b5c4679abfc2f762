"""The bench commands' command line: bad input is one line and exit status 2.

``fdpass-bench`` and ``fdpass-bench-breakdown`` share it so that both read
their options, name a wrong ``--impl`` and print an error the same way.
"""

from __future__ import annotations

import argparse
import math
import sys
from typing import NoReturn

from ..loading import ImplError, ImplSpec, load_impl


class UsageError(Exception):
    """A user error: printed as one line, exit status 2."""


class Parser(argparse.ArgumentParser):
    """argparse that raises :class:`UsageError` instead of printing usage and exiting."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def int_at_least(low: int, high: int | None = None) -> type[int]:
    """An argparse ``type`` for an integer in ``[low, high]``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low or (high is not None and value > high):
            bound = f"between {low} and {high}" if high is not None else f">= {low}"
            raise argparse.ArgumentTypeError(f"expected an integer {bound}, got {value}")
        return value

    parse.__name__ = "integer"
    return parse  # type: ignore[return-value]


def positive_seconds(text: str) -> float:
    """An argparse ``type`` for a finite, positive number of seconds."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text}")
    return value


def impl_option(spec: str, option: str = "--impl") -> ImplSpec:
    """Load ``spec`` given as ``option``; a bad one is a :class:`UsageError` naming it."""
    try:
        return load_impl(spec)
    except ImplError as exc:
        raise UsageError(str(exc).replace("--fdpass-impl=", f"{option} ")) from None


def print_error(prog: str, message: object) -> None:
    """``PROG: error: message`` on stderr, the one line a person reads."""
    print(f"{prog}: error: {message}", file=sys.stderr)
