"""Record the util-linux ``ipcs -q -m -s`` samples used by the parser tests.

Run as root from the repository root::

    .venv/bin/python tests/data/ipcs/capture_linux.py tests/data/ipcs

The script re-executes itself inside a fresh IPC namespace (``unshare --ipc``)
so that the sample holds only the objects made here, whatever else runs on the
machine; it removes every object before it exits and checks that ``ipcs`` is
empty again, and the namespace vanishes with its last process anyway. The
objects cover what the parser must tell apart: a private key (0x00000000),
non-private keys, every kind, several modes, a queue holding a message, an
owner with a passwd entry other than root (nobody) and an owner without one
(uid 4242, which ipcs prints as a number).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from fdpass_conformance import sysv

_ENV = {**os.environ, "LC_ALL": "C"}
_AS_NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
_AS_4242 = ["setpriv", "--reuid=4242", "--regid=4242", "--clear-groups"]


def _run(argv: list[str]) -> str:
    done = subprocess.run(argv, env=_ENV, capture_output=True, text=True, timeout=10, check=True)
    return done.stdout


def _ipcmk(argv: list[str]) -> tuple[str, int]:
    """Run ipcmk and return the kind and id it reports ("Message queue id: 3")."""
    out = _run(argv)
    found = re.search(r"(Message queue|Shared memory|Semaphore) id: (\d+)", out)
    if found is None:
        raise RuntimeError(f"unexpected ipcmk output: {out!r}")
    flag = {"Message queue": "-q", "Shared memory": "-m", "Semaphore": "-s"}[found.group(1)]
    return flag, int(found.group(2))


def capture(outdir: Path) -> None:
    empty = _run(["ipcs", "-q", "-m", "-s"])
    if re.search(r"^0x", empty, re.MULTILINE):
        raise RuntimeError("the new IPC namespace is not empty")
    (outdir / "linux-empty.txt").write_text(empty)

    made: list[tuple[str, int]] = []
    try:
        private = sysv.msgget(sysv.IPC_PRIVATE, 0o600)
        made.append(("-q", private))
        keyed = sysv.msgget(0x1234ABCD, 0o640)
        made.append(("-q", keyed))
        sysv.msgsnd(keyed, 1, b"hello")
        made.append(_ipcmk([*_AS_NOBODY, "ipcmk", "-Q", "-p", "0666"]))
        made.append(_ipcmk(["ipcmk", "-M", "4096", "-p", "0600"]))
        made.append(_ipcmk(["ipcmk", "-M", "65536", "-p", "0644"]))
        made.append(_ipcmk(["ipcmk", "-S", "1", "-p", "0600"]))
        made.append(_ipcmk([*_AS_4242, "ipcmk", "-S", "3", "-p", "0640"]))
        (outdir / "linux-objects.txt").write_text(_run(["ipcs", "-q", "-m", "-s"]))
    finally:
        for flag, ident in made:
            subprocess.run(["ipcrm", flag, str(ident)], env=_ENV, timeout=10, check=False)
    if _run(["ipcs", "-q", "-m", "-s"]) != empty:
        raise RuntimeError("objects were left behind")


def main() -> None:
    outdir = Path(sys.argv[1])
    if os.environ.get("_FDPASS_CAPTURE_IN_NS") != "1":
        env = {**os.environ, "_FDPASS_CAPTURE_IN_NS": "1"}
        argv = ["unshare", "--ipc", sys.executable, __file__, str(outdir)]
        raise SystemExit(subprocess.run(argv, env=env, timeout=60, check=False).returncode)
    capture(outdir)


if __name__ == "__main__":
    main()
