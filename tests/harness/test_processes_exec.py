"""``exec_dies_with_parent``: a program started with it does not outlive its parent.

Real processes: a Python parent starts ``sleep`` with the preexec function and
exits at once; the kernel (PR_SET_PDEATHSIG) must signal the orphan.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import psutil
import pytest

from fdpass_conformance.processes import exec_dies_with_parent

pytestmark = pytest.mark.timeout(60)

PARENT = """
import subprocess, sys
from fdpass_conformance.processes import exec_dies_with_parent
child = subprocess.Popen(["sleep", "30"], preexec_fn=exec_dies_with_parent({sig}))
print(child.pid, flush=True)
"""


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_the_program_dies_with_its_parent(sig: int) -> None:
    out = subprocess.run(
        [sys.executable, "-c", PARENT.format(sig=int(sig))],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    pid = int(out.stdout.split()[0])
    deadline = time.monotonic() + 10
    while not _gone(pid):
        if time.monotonic() > deadline:
            psutil.Process(pid).kill()
            pytest.fail(f"sleep (pid {pid}) outlived its parent by 10 s")
        time.sleep(0.01)


def test_no_preexec_where_the_kernel_has_no_pdeathsig(monkeypatch: pytest.MonkeyPatch) -> None:
    """MOCK: macOS has no prctl; the helper must say so with None, not fail in the child."""
    from fdpass_conformance.processes import fork

    monkeypatch.setattr(fork, "_libc", None)
    assert exec_dies_with_parent() is None
