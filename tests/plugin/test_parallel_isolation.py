"""Under ``pytest -n 2`` a leaking and a clean implementation don't affect each other.

Run in both isolation modes: the server's own IPC namespace (exact, parallel)
and the fallback of a global ``ipcs`` diff serialised by a file lock, forced
with FDPASS_CONFORMANCE_NO_IPC_NAMESPACE=1.
"""

from __future__ import annotations

import json
import os
import shutil
import sys

import pytest

pytestmark = pytest.mark.timeout(300)

LEAKY = '''
from reference import MasterProxy

class NeverRemovesQueue(MasterProxy):
    """Seed round 2 #2: the queue is never removed."""

    def close(self):
        self._queue = None
        super().close()
'''

#: What the leak may legitimately break; everything else must pass.
LEAK_BREAKS = {"SP-12", "IPC-02", "IPC-09"}


@pytest.mark.parametrize("mode", ["ipc-namespace", "global-lock"])
def test_leaking_and_clean_in_parallel(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    pytester.makepyfile(leaky=LEAKY)
    monkeypatch.setenv("PYTHONPATH", str(pytester.path))
    prefix: list[str] = []
    if mode == "global-lock":
        # The fallback diffs the global ipcs listing; other tests of this very
        # session create queues in it without the lock. So the inner session
        # gets a namespace of its own (as its "global" one): its two xdist
        # workers then share it, and only the file lock keeps them apart.
        if os.geteuid() != 0 or shutil.which("unshare") is None:
            pytest.skip("needs root and unshare(1) to give the inner run its own IPC namespace")
        monkeypatch.setenv("FDPASS_CONFORMANCE_NO_IPC_NAMESPACE", "1")
        prefix = ["unshare", "--ipc"]
    args = [
        "-p", "no:cacheprovider", "-n", "2",
        "--fdpass-impl=leaky:NeverRemovesQueue", "--fdpass-impl=reference:MasterProxy",
        "--fdpass-only=SP-1,SP-09,FP-0,IPC", "--fdpass-report=report.json",
    ]  # fmt: skip
    result = pytester.run(
        *prefix, sys.executable, "-m", "pytest", f"--basetemp={pytester.path / 'tmp'}", *args,
        timeout=240,
    )  # fmt: skip
    report = json.loads((pytester.path / "report.json").read_text())
    results = {
        impl["id"]: {r["id"]: r["verdict"] for r in impl["requirements"]}
        for impl in report["implementations"]
    }
    assert f"IPC isolation: {mode.replace('global-lock', 'global')}" in result.stdout.str()
    clean = {rid for rid, v in results["MasterProxy"].items() if v in ("fail", "warn")}
    assert not clean, f"the clean implementation was blamed for {sorted(clean)}"
    leaky = {rid for rid, v in results["NeverRemovesQueue"].items() if v in ("fail", "warn")}
    assert "SP-12" in leaky, "the leaked queue was not reported"
    assert leaky <= LEAK_BREAKS, f"spurious failures: {sorted(leaky - LEAK_BREAKS)}"
    assert result.ret == 1
