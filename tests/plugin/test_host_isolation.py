"""Every call into the implementation stays inside the isolation the servers use.

A proxy that creates System V queues in its constructor and in
``is_supported()`` (and never removes them) is run through the whole gate:
the configure-time check, the applicability probe and the suites. Afterwards
the host's ``ipcs`` must show none of its queues. The proxy makes its queues
under a key unique to this test, so other tests running at the same time
cannot be mistaken for it.
"""

from __future__ import annotations

import os
import sys
import zlib
from pathlib import Path

import pytest

from fdpass_conformance.leaks.ipcs import list_ipc_objects, remove_ipc_object

from .helpers import INNER_TIMEOUT, needs_ipcs

LEAKY = """
import contextlib

from fdpass_conformance.sysv import msgget
from fdpass_conformance.bench.minimal import MinimalMasterProxy

KEY = {key}


class LeakyProxy(MinimalMasterProxy):
    # Each call makes one more queue under KEY + n and never removes it.
    made = 0

    def _leak(self):
        LeakyProxy.made += 1
        with contextlib.suppress(FileExistsError):
            msgget(KEY + LeakyProxy.made % 64, 0o600)

    def __init__(self):
        super().__init__()
        self._leak()

    def is_supported(self):
        self._leak()
        return super().is_supported()
"""


#: An exec: program that makes a queue as it starts, then becomes the adapter's fake
#: program (a correct shared-listener proxy); exec keeps its pid for the hello.
LEAKY_PROGRAM = """
import contextlib, os, sys
from fdpass_conformance.sysv import msgget

with contextlib.suppress(FileExistsError):
    msgget({key} + 1, 0o600)
os.execv(sys.executable, [sys.executable, {fake!r}])
"""
FAKE_PROGRAM = Path(__file__).resolve().parents[1] / "adapter" / "fake_program.py"


def _ours(key: int) -> list[str]:
    return [o.describe() for o in list_ipc_objects() if key <= o.key < key + 64]


@needs_ipcs
@pytest.mark.timeout(INNER_TIMEOUT * 3)
def test_a_proxy_leaking_from_constructor_and_is_supported_leaves_nothing_on_the_host(
    pytester: pytest.Pytester,
) -> None:
    key = 0x7F000000 | (zlib.crc32(f"{os.getpid()}{pytester.path}".encode()) & 0xFFFF00)
    pytester.makepyfile(leaky=LEAKY.format(key=key))
    before = _ours(key)
    try:
        result = pytester.runpytest_subprocess(
            "-p", "no:cacheprovider", "--fdpass-impl=leaky:LeakyProxy",
            "--fdpass-only=SP-01,SP-02,IPC-01", timeout=INNER_TIMEOUT * 2,
        )  # fmt: skip
        after = _ours(key)
    finally:
        for obj in list_ipc_objects():  # never leave them, even when the test fails
            if key <= obj.key < key + 64 and obj.describe() not in before:
                remove_ipc_object(obj)
    outcome = "\n".join(result.outlines[-25:])
    table = [line.split() for line in result.outlines if line[:3] in ("SP-", "IPC")]
    rows = {cells[0]: cells[2] for cells in table if len(cells) > 2}
    assert rows.get("SP-01") == "pass", outcome  # the gate really ran the proxy
    assert rows.get("IPC-01") == "fail", outcome  # and saw its leaks
    assert after == before, f"the run left the proxy's queues on the host: {after}\n{outcome}"


@needs_ipcs
@pytest.mark.timeout(INNER_TIMEOUT * 3)
def test_an_exec_program_leaking_as_it_starts_leaves_nothing_on_the_host(
    pytester: pytest.Pytester,
) -> None:
    """The configure-time trial start of an exec: program (its hello) is isolated too."""
    key = 0x7E000000 | (zlib.crc32(f"{os.getpid()}{pytester.path}".encode()) & 0xFFFF00)
    program = pytester.makepyfile(
        leaky_program=LEAKY_PROGRAM.format(key=key, fake=str(FAKE_PROGRAM))
    )
    before = _ours(key)
    try:
        result = pytester.runpytest_subprocess(
            "-p", "no:cacheprovider", f"--fdpass-impl=exec:{sys.executable} {program}",
            "--fdpass-only=SP-01,IPC-01", timeout=INNER_TIMEOUT * 2,
        )  # fmt: skip
        after = _ours(key)
    finally:
        for obj in list_ipc_objects():
            if key <= obj.key < key + 64 and obj.describe() not in before:
                remove_ipc_object(obj)
    outcome = "\n".join(result.outlines[-25:])
    table = [line.split() for line in result.outlines if line[:3] in ("SP-", "IPC")]
    rows = {cells[0]: cells[2] for cells in table if len(cells) > 2}
    assert rows.get("SP-01") == "pass", outcome
    assert rows.get("IPC-01") == "fail", outcome
    assert after == before, f"the run left the program's queue on the host: {after}\n{outcome}"
