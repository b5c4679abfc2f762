"""IPC namespaces and the global-lock fallback, on real kernel objects and real processes.

Everything a test creates lives in a namespace of its own (and vanishes
with it) or is removed in a ``finally``; every wait has a deadline.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import select
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from fdpass_conformance.harness import isolation, namespace
from fdpass_conformance.harness.isolation import global_ipc_lock, isolation_mode, lock_path
from fdpass_conformance.harness.namespace import (
    CLONE_NEWIPC,
    CLONE_NEWUSER,
    IPC_NAMESPACES,
    NamespaceHandle,
    enter_new_ipc_namespace,
    setns,
    unshare,
)
from fdpass_conformance.processes import call_in_child, kill_and_reap, wait_pid
from fdpass_conformance.sysv import MessageQueue

needs_ns = pytest.mark.skipif(
    not IPC_NAMESPACES, reason=f"IPC namespaces unavailable: {namespace.IPC_NAMESPACE_REASON}"
)
needs_limits = pytest.mark.skipif(
    not namespace.IPC_LIMITS, reason=f"IPC limits unavailable: {namespace.IPC_LIMITS_REASON}"
)
RUNNERS = ["nsenter", "setns"] if shutil.which("nsenter") else ["setns"]


def _read_line(fd: int, timeout: float = 10.0) -> str:
    data = b""
    deadline = time.monotonic() + timeout
    while not data.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"no line within {timeout:g}s (got {data!r})")
        ready, _, _ = select.select([fd], [], [], remaining)
        if ready:
            chunk = os.read(fd, 1024)
            if not chunk:
                raise EOFError(f"child closed its pipe (got {data!r})")
            data += chunk
    return data.decode().strip()


class Child:
    """A forked child: runs ``setup`` (its return is reported as a line), then waits to be told
    to exit. If we die first it sees EOF and exits too."""

    def __init__(self, setup: Callable[[], str]) -> None:
        cmd_r, self._cmd_w = os.pipe()
        self._rep_r, rep_w = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:  # pragma: no cover - child
            try:
                os.close(self._cmd_w)
                os.close(self._rep_r)
                try:
                    line = setup()
                except BaseException as exc:
                    line = f"error {type(exc).__name__}: {exc}"
                os.write(rep_w, line.encode() + b"\n")
                os.read(cmd_r, 1)
            finally:
                os._exit(0)
        os.close(cmd_r)
        os.close(rep_w)
        self.line = _read_line(self._rep_r)

    def finish(self, timeout: float = 10.0) -> int:
        os.write(self._cmd_w, b"x")
        return wait_pid(self.pid, timeout)

    def close(self) -> None:
        for fd in (self._cmd_w, self._rep_r):
            with contextlib.suppress(OSError):
                os.close(fd)
        kill_and_reap(self.pid)


def _global_ipcs() -> str:
    return subprocess.run(
        ["ipcs", "-q", "-m", "-s"], capture_output=True, text=True, timeout=10, check=True
    ).stdout


def _host_msgmni() -> str:
    return Path("/proc/sys/kernel/msgmni").read_text().strip()


def _random_key() -> int:
    return random.randrange(0x10000000, 0x7FFFFFFF)


def _queue_in_new_namespace(key: int) -> Callable[[], str]:
    def setup() -> str:
        enter_new_ipc_namespace()
        MessageQueue(key=key)  # never removed: the namespace takes it along
        return "ready"

    return setup


@needs_ns
@pytest.mark.timeout(30)
def test_queue_is_listed_inside_only_and_survives_its_creator() -> None:
    key = _random_key()
    hexkey = f"0x{key:08x}"
    child = Child(_queue_in_new_namespace(key))
    handle: NamespaceHandle | None = None
    try:
        assert child.line == "ready"
        handle = NamespaceHandle.from_pid(child.pid)
        assert hexkey in handle.ipcs_text()
        assert hexkey not in _global_ipcs()
        assert child.finish() == 0
        # Only our fd keeps the namespace now; its queue is still there to inspect.
        inside = handle.ipcs_text()
        assert hexkey in inside
        assert sum(line.startswith("0x") for line in inside.splitlines()) == 1
        handle.close()
        handle.close()  # idempotent
        with pytest.raises(ValueError, match="closed"):
            handle.ipcs_text()
        assert hexkey not in _global_ipcs()  # never leaked into the host's namespace
    finally:
        if handle is not None:
            handle.close()
        child.close()


def _ready_in_new_namespace() -> str:
    enter_new_ipc_namespace()
    return "ready"


def _msgget_errno() -> bytes:
    try:
        MessageQueue().remove()
    except OSError as exc:
        return str(exc.errno).encode()
    return b"created"


@needs_ns
@needs_limits
@pytest.mark.timeout(60)
@pytest.mark.parametrize("runner", RUNNERS)
def test_msgmni_zero_inside_gives_enospc_and_leaves_the_host_alone(runner: str) -> None:
    host_before = _host_msgmni()
    child = Child(_ready_in_new_namespace)
    handle: NamespaceHandle | None = None
    try:
        assert child.line == "ready"
        handle = ns = NamespaceHandle.from_pid(child.pid, runner=runner)
        assert handle.runner == runner

        def joined_msgget() -> bytes:
            ns.enter()
            return _msgget_errno()

        default = handle.get_limit("msgmni")
        handle.set_limit("msgmni", 0)
        assert handle.get_limit("msgmni") == 0
        assert _host_msgmni() == host_before
        # A process that joins the namespace gets the real errno from msgget.
        joined = call_in_child(joined_msgget)
        assert (joined.status, joined.output) == (0, str(errno.ENOSPC).encode())
        # So does a command run inside.
        script = (
            "from fdpass_conformance.sysv import msgget\n"
            "try:\n    msgget()\nexcept OSError as e:\n    print(e.errno)\n"
        )
        ran = handle.run([sys.executable, "-c", script], timeout=20)
        assert (ran.returncode, ran.stdout.strip()) == (0, str(errno.ENOSPC)), ran.stderr
        handle.set_limit("msgmni", default)
        joined = call_in_child(joined_msgget)
        assert (joined.status, joined.output) == (0, b"created")
        assert not any(line.startswith("0x") for line in handle.ipcs_text().splitlines())
        for name in ("msgmnb", "msgmax"):
            handle.set_limit(name, 4096)
            assert handle.get_limit(name) == 4096
        assert _host_msgmni() == host_before
    finally:
        if handle is not None:
            handle.close()
        child.close()


def _ipc_namespace_creatable(user_fd: int) -> bytes:
    """In a forked child: join user namespace U and try to make one more IPC namespace there."""

    def probe() -> bytes:
        setns(user_fd, CLONE_NEWUSER)
        try:
            unshare(CLONE_NEWIPC)
        except OSError as exc:
            return str(exc.errno).encode()
        return b"ok"

    return call_in_child(probe, timeout=10).output


@needs_ns
@pytest.mark.timeout(60)
def test_namespace_and_its_objects_vanish_after_close_and_last_exit() -> None:
    """Proof by counting: a user namespace U allowing one IPC namespace (user.max_ipc_namespaces=1)
    can make a second only once the first, holding a queue, has really been destroyed."""
    key = _random_key()
    uid, gid = os.getuid(), os.getgid()

    def setup() -> str:
        unshare(CLONE_NEWUSER)
        Path("/proc/self/uid_map").write_text(f"0 {uid} 1\n")
        Path("/proc/self/setgroups").write_text("deny\n")
        Path("/proc/self/gid_map").write_text(f"0 {gid} 1\n")
        Path("/proc/sys/user/max_ipc_namespaces").write_text("1\n")
        return _queue_in_new_namespace(key)()

    child = Child(setup)
    handle: NamespaceHandle | None = None
    user_fd = -1
    try:
        assert child.line == "ready"
        user_fd = os.open(f"/proc/{child.pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
        handle = NamespaceHandle.from_pid(child.pid)
        assert handle.has_user_namespace
        assert f"0x{key:08x}" in handle.ipcs_text()
        enospc = str(errno.ENOSPC).encode()
        assert _ipc_namespace_creatable(user_fd) == enospc  # the quota of 1 is in use
        assert child.finish() == 0
        assert f"0x{key:08x}" in handle.ipcs_text()  # held by our fd alone
        assert _ipc_namespace_creatable(user_fd) == enospc
        handle.close()
        deadline = time.monotonic() + 10  # the kernel frees namespaces from a work queue
        while (answer := _ipc_namespace_creatable(user_fd)) != b"ok":
            assert answer == enospc
            assert time.monotonic() < deadline, "the IPC namespace outlived its last reference"
            time.sleep(0.02)
    finally:
        if handle is not None:
            handle.close()
        if user_fd >= 0:
            os.close(user_fd)
        child.close()


@needs_ns
def test_from_pid_refuses_our_own_namespace_and_dead_pids() -> None:
    with pytest.raises(ValueError, match="refusing a handle on the host's"):
        NamespaceHandle.from_pid(os.getpid())
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        os._exit(0)
    os.waitpid(pid, 0)
    with pytest.raises(FileNotFoundError):
        NamespaceHandle.from_pid(pid)


@needs_ns
@pytest.mark.timeout(30)
def test_limit_arguments_are_checked_before_anything_runs() -> None:
    child = Child(_ready_in_new_namespace)
    try:
        with NamespaceHandle.from_pid(child.pid) as handle:
            with pytest.raises(ValueError, match="unknown limit 'shmmax'"):
                handle.set_limit("shmmax", 1)
            with pytest.raises(ValueError, match=r"within 0\.\."):
                handle.set_limit("msgmni", -1)
            with pytest.raises(TypeError, match="must be an int"):
                handle.set_limit("msgmni", True)
            with pytest.raises(ValueError, match="timeout must be positive"):
                handle.run(["true"], timeout=0)
            with pytest.raises(subprocess.TimeoutExpired):
                handle.run(["sleep", "10"], timeout=0.3)
        assert handle.closed
    finally:
        child.close()


@pytest.mark.timeout(30)
def test_user_namespace_path_explains_a_threaded_caller() -> None:
    """The real EINVAL of unshare(CLONE_NEWUSER) in a multi-threaded process, in one line."""
    if not sys.platform.startswith("linux"):
        pytest.skip("Linux only")

    def threaded() -> bytes:
        threading.Thread(target=time.sleep, args=(5,), daemon=True).start()
        try:
            namespace._unshare_user_and_ipc("")
        except OSError as exc:
            return f"{exc.errno} {exc.strerror}".encode()
        return b"moved"

    result = call_in_child(threaded)
    assert result.output.decode() == (
        f"{errno.EINVAL} unshare(CLONE_NEWUSER|CLONE_NEWIPC) failed: EINVAL "
        "(the calling process is multi-threaded; call it right after fork)"
    )


@pytest.mark.timeout(30)
def test_detection_gives_the_reason_when_the_move_is_refused() -> None:
    """A real refusal: in a user namespace whose uid_map was never written our uid is
    unmapped, so the kernel refuses any further user namespace with EPERM."""
    if not sys.platform.startswith("linux"):
        pytest.skip("Linux only")

    def unmapped() -> bytes:
        unshare(CLONE_NEWUSER)  # no uid_map: we are the overflow uid, not root, in here
        return repr(tuple(namespace._detect())).encode()

    result = call_in_child(unmapped, timeout=20)
    assert result.status == 0, result.output
    why = (
        "unshare(CLONE_NEWUSER|CLONE_NEWIPC) failed: EPERM "
        "(not root and unprivileged user namespaces disabled)"
    )
    assert result.output.decode() == repr((False, why, "", False, why))


_NOBODY_SCRIPT = r"""
import json, os, sys
from fdpass_conformance.harness import namespace as n
from fdpass_conformance.sysv import MessageQueue
from fdpass_conformance.processes import wait_pid
key = int(sys.argv[1])
out = {"uid": os.getuid(), "method": n.IPC_NAMESPACE_METHOD, "limits": n.IPC_LIMITS}
for runner in sys.argv[2:]:
    r, w = os.pipe()
    r2, w2 = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            os.close(w2)
            n.enter_new_ipc_namespace()
            MessageQueue(key=key)
            os.write(w, b"x")
            os.read(r2, 1)
        finally:
            os._exit(0)
    os.close(w)
    os.close(r2)
    try:
        assert os.read(r, 1) == b"x"
        with n.NamespaceHandle.from_pid(pid, runner=runner) as h:
            res = {"user": h.has_user_namespace, "seen": "0x%08x" % key in h.ipcs_text()}
            h.set_limit("msgmni", 0)
            res["msgmni"] = h.get_limit("msgmni")
        out[runner] = res
    finally:
        os.close(w2)
        wait_pid(pid, 10)
        os.close(r)
print(json.dumps(out))
"""


def _user_namespace_report(prefix: list[str]) -> dict[str, Any]:
    """_NOBODY_SCRIPT run under ``prefix`` (setpriv ...): it must take the user+ipc path,
    each runner must see its own queue there, and the host must never see it."""
    key = _random_key()
    result = subprocess.run(
        [*prefix, sys.executable, "-c", _NOBODY_SCRIPT, str(key), *RUNNERS],
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
        cwd="/",
    )
    assert result.returncode == 0, result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    assert report["method"] == "user+ipc"
    for runner in RUNNERS:
        assert report[runner] == {"user": True, "seen": True, "msgmni": 0}
    assert f"0x{key:08x}" not in _global_ipcs()
    return report


@needs_ns
@pytest.mark.timeout(60)
def test_unprivileged_path_as_nobody() -> None:
    """Run as uid 65534 (setpriv): detection picks user+ipc and the handle works through it."""

    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        pytest.skip("needs root and setpriv to become an unprivileged user")
    nobody = [setpriv, "--reuid", "65534", "--regid", "65534", "--clear-groups"]
    check = subprocess.run(
        [*nobody, sys.executable, "-c", "import fdpass_conformance"],
        capture_output=True,
        timeout=20,
        check=False,
        cwd="/",
    )
    if check.returncode != 0:
        pytest.skip(f"this interpreter is not usable by nobody: {check.stderr[-200:]!r}")
    report = _user_namespace_report(nobody)
    assert report["uid"] == 65534


def test_macos_has_a_clear_unavailable_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """MOCK: sys.platform is patched to "darwin": this Linux machine cannot run that branch."""
    monkeypatch.setattr(sys, "platform", "darwin")
    assert namespace._detect() == namespace.Detection(
        False, "macOS has no IPC namespaces", "", False, "macOS has no IPC namespaces"
    )
    with pytest.raises(OSError, match="unavailable: macOS has no IPC namespaces") as info:
        enter_new_ipc_namespace()
    assert info.value.errno == errno.ENOSYS
    with pytest.raises(OSError, match="unavailable: macOS has no IPC namespaces"):
        NamespaceHandle.from_pid(1)


@pytest.mark.timeout(60)
def test_environment_switch_selects_the_lock_fallback_for_real() -> None:
    code = (
        "from fdpass_conformance.harness.isolation import isolation_mode; print(isolation_mode())"
    )
    env = dict(os.environ, FDPASS_CONFORMANCE_NO_IPC_NAMESPACE="1")
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=50,
        env=env,
        check=True,
    )
    expected = "global-ipcs+lock (disabled by FDPASS_CONFORMANCE_NO_IPC_NAMESPACE)"
    assert result.stdout.strip() == expected


def test_isolation_mode_names_the_path() -> None:
    if IPC_NAMESPACES:
        assert isolation_mode() == "ipc-namespace"
    else:
        assert isolation_mode() == f"global-ipcs+lock ({namespace.IPC_NAMESPACE_REASON})"


def _lock_holder(path: str | None) -> Child:
    """A child that takes the lock, reports "held", and keeps it until told to exit."""

    held = []

    def setup() -> str:
        lock = global_ipc_lock(10, path=path)
        lock.__enter__()  # released by the kernel when the child exits
        held.append(lock)  # a dropped generator would release it at once
        return "held"

    return Child(setup)


@pytest.mark.timeout(30)
def test_global_lock_serializes_two_processes(tmp_path: Path) -> None:
    path = str(tmp_path / "ipc.lock")
    rfd, wfd = os.pipe()
    pid = -1
    try:
        with global_ipc_lock(5, path=path):
            pid = os.fork()
            if pid == 0:  # pragma: no cover - child
                try:
                    os.close(rfd)
                    os.write(wfd, b"trying\n")
                    with global_ipc_lock(10, path=path):
                        os.write(wfd, f"got {time.monotonic()}\n".encode())
                finally:
                    os._exit(0)
            os.close(wfd)
            wfd = -1
            assert _read_line(rfd) == "trying"
            ready, _, _ = select.select([rfd], [], [], 0.5)
            assert not ready, "the second process got the lock while the first held it"
            released = time.monotonic()
        line = _read_line(rfd)
        assert line.startswith("got ")
        assert float(line.split()[1]) >= released
        assert wait_pid(pid, 10) == 0
    finally:
        os.close(rfd)
        if wfd >= 0:
            os.close(wfd)
        if pid > 0:
            kill_and_reap(pid)


@pytest.mark.timeout(30)
def test_global_lock_timeout_names_the_lock_file() -> None:
    holder = _lock_holder(None)
    try:
        assert holder.line == "held"
        start = time.monotonic()
        with pytest.raises(TimeoutError) as info, global_ipc_lock(0.3):
            pass
        assert 0.25 <= time.monotonic() - start < 5
        message = str(info.value)
        assert message == (
            f"could not take the global IPC lock {lock_path()} within 0.3s "
            "(another test process holds it)"
        )
        assert lock_path().endswith("fdpass-conformance-ipc.lock")
        holder.finish()
        with global_ipc_lock(5):
            pass  # free again once the holder is gone
    finally:
        holder.close()
    with pytest.raises(ValueError, match="finite number of seconds"), global_ipc_lock(-1):
        pass
    with pytest.raises(ValueError, match="finite number of seconds"), global_ipc_lock(float("inf")):
        pass
    assert isolation.LOCK_NAME == "fdpass-conformance-ipc.lock"


@needs_ns
@pytest.mark.timeout(60)
def test_container_root_without_cap_sys_admin_takes_the_user_namespace_path() -> None:
    """Root without CAP_SYS_ADMIN (as in a container), made for real with setpriv: the root
    attempt fails with EPERM, detection falls back to user+ipc, and the handle works."""

    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        pytest.skip("needs root and setpriv to drop CAP_SYS_ADMIN")
    no_admin = [setpriv, "--bounding-set", "-sys_admin"]
    assert _user_namespace_report(no_admin)["uid"] == 0
