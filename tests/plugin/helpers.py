"""Throwaway implementations and ipcs helpers for the plugin tests."""

from __future__ import annotations

import shutil
import subprocess

import pytest

needs_ipcs = pytest.mark.skipif(shutil.which("ipcs") is None, reason="needs util-linux ipcs")

#: Seconds an inner pytest run may take before the outer test fails.
INNER_TIMEOUT = 60

#: A module of implementations, good and bad, for --fdpass-impl.
IMPLS = '''
import os


class Proxy:
    def is_supported(self):
        return True

    def create_socket(self, port, protocol="tcp"):
        raise NotImplementedError

    def accept(self, listener):
        raise NotImplementedError

    def close(self):
        pass


NOT_CALLABLE = 42


class Raising:
    def __init__(self):
        raise ValueError("factory refused\\nsecond line")


class Partial:
    def is_supported(self):
        return True

    def create_socket(self, port, protocol="tcp"):
        raise NotImplementedError


class HalfFdPassing(Proxy):
    def dispatch(self, listener, timeout=None):
        raise NotImplementedError


class BadMember(Proxy):
    accept = 3


class CloseRaises(Proxy):
    def close(self):
        raise RuntimeError("cannot close\\nmore")


def make_nothing():
    return None


class Recorded(Proxy):
    """Logs construction and close() to the file named by $IMPL_LOG."""

    def __init__(self):
        self._log("init")

    def close(self):
        self._log("close")

    def _log(self, what):
        with open(os.environ["IMPL_LOG"], "a") as f:
            f.write(what + "\\n")


#: The pytest process that imported this module (the configure-time probe runs in a
#: forked child of it, in the servers' isolation).
PYTEST_PID = os.getpid()


class SecondCloseFails(Proxy):
    """The probe (in its isolated child) closes fine; every instance of the tests fails."""

    def close(self):
        if os.getpid() == PYTEST_PID:
            raise OSError(9, "close exploded")
'''


def queue_perms() -> dict[int, str]:
    """msqid -> perms of every message queue, as ``ipcs -q`` lists them."""
    out = subprocess.run(["ipcs", "-q"], capture_output=True, text=True, timeout=10, check=True)
    perms: dict[int, str] = {}
    for line in out.stdout.splitlines():
        fields = line.split()
        if len(fields) >= 4 and fields[0].startswith("0x") and fields[1].isdigit():
            perms[int(fields[1])] = fields[3]
    return perms


def error_lines(stderr: list[str]) -> list[str]:
    return [line for line in stderr if line.strip()]


#: The reference MasterProxy with two real defects: it binds an ephemeral port when
#: given ``None`` (SP-07, a MUST) and accepts the worker count ``"2"`` (FP-16, a SHOULD).
SLOPPY = """
from fdpass_conformance.reference import MasterProxy

class Sloppy(MasterProxy):
    def create_socket(self, port, protocol="tcp"):
        return super().create_socket(0 if port is None else port, protocol)

    def open_channels(self, workers):
        return super().open_channels(int(workers) if isinstance(workers, str) else workers)
"""

SLOPPY_SUITE = """
from fdpass_conformance import ContractSuite
from sloppy import Sloppy

class TestSloppy(ContractSuite):
    factory = Sloppy
"""
