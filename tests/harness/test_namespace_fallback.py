"""The paths of ``harness.namespace`` that a root run on a capable Linux machine does not take.

Most of them are taken for real, in a forked child (the pytest process never
moves): the user-namespace path as root, kernel refusals provoked by lowering
``user.max_user_namespaces``/``user.max_ipc_namespaces`` inside a user
namespace of our own, a ``setns`` refused to an unprivileged or multi-threaded
process, commands that fail inside the namespace. Where the machine cannot
produce the situation (another platform, another Python, an LSM, an old
kernel, a probe child that dies), the test says what it mocks and why; such a
test proves only that the module does the right thing given those answers.
"""

from __future__ import annotations

import errno
import os
import select
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fdpass_conformance.harness import namespace
from fdpass_conformance.harness.namespace import (
    CLONE_NEWIPC,
    CLONE_NEWUSER,
    IPC_NAMESPACES,
    Detection,
    NamespaceHandle,
)
from fdpass_conformance.processes import ChildResult, call_in_child, kill_and_reap, wait_pid
from fdpass_conformance.sysv import MessageQueue

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only"),
]
needs_ns = pytest.mark.skipif(
    not IPC_NAMESPACES, reason=f"IPC namespaces unavailable: {namespace.IPC_NAMESPACE_REASON}"
)
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (user namespace as root)")


def _own_user_namespace(**limits: int) -> None:
    """In a forked child: a new user namespace where we are root, with ``user.*`` limits set."""
    uid, gid = os.getuid(), os.getgid()
    namespace.unshare(CLONE_NEWUSER)
    Path("/proc/self/uid_map").write_text(f"0 {uid} 1\n")
    Path("/proc/self/setgroups").write_text("deny\n")
    Path("/proc/self/gid_map").write_text(f"0 {gid} 1\n")
    for name, value in limits.items():
        Path(f"/proc/sys/user/{name}").write_text(f"{value}\n")


def _error_line(fn: Callable[[], object]) -> bytes:
    """Run ``fn``; "ok" or the errno and message of its OSError."""
    try:
        fn()
    except OSError as exc:
        return f"{exc.errno} {exc.strerror}".encode()
    return b"ok"


def _in_child(fn: Callable[[], bytes | None], timeout: float = 20.0) -> str:
    result = call_in_child(fn, timeout=timeout)
    assert result.status == 0, result
    return result.output.decode()


class Holder:
    """A forked child that runs ``setup`` and keeps its namespaces until ``finish``."""

    def __init__(self, setup: Callable[[], None]) -> None:
        cmd_r, self._cmd_w = os.pipe()
        rep_r, rep_w = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:  # pragma: no cover - child
            try:
                os.close(self._cmd_w)
                os.close(rep_r)
                try:
                    setup()
                    os.write(rep_w, b"ready")
                except BaseException as exc:
                    os.write(rep_w, f"error {exc}".encode())
                os.read(cmd_r, 1)  # EOF when the parent goes: never outlives the test
            finally:
                os._exit(0)
        os.close(cmd_r)
        os.close(rep_w)
        try:
            ready, _, _ = select.select([rep_r], [], [], 20)
            self.line = os.read(rep_r, 1024).decode() if ready else "no answer"
        finally:
            os.close(rep_r)

    def finish(self) -> int:
        os.close(self._cmd_w)
        self._cmd_w = -1
        return wait_pid(self.pid, 10)

    def close(self) -> None:
        if self._cmd_w >= 0:
            os.close(self._cmd_w)
            self._cmd_w = -1
        kill_and_reap(self.pid)


@pytest.fixture
def user_ns_holder() -> Iterator[Holder]:
    """A child in a new user+IPC namespace made by ``_unshare_user_and_ipc`` (the non-root path)."""
    holder = Holder(lambda: namespace._unshare_user_and_ipc(""))
    try:
        assert holder.line == "ready"
        yield holder
    finally:
        holder.close()


def _fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


# -- the user-namespace path, for real -------------------------------------------------


@needs_ns
@needs_root
def test_user_and_ipc_path_maps_us_to_root_in_a_new_namespace() -> None:
    """What a non-root run does, taken by root in a child: new user and IPC namespaces,
    our uid and gid mapped to 0 inside (``unshare -Ur``), one-line ``uid_map``/``gid_map``."""
    host_ipc = os.stat("/proc/self/ns/ipc").st_ino
    host_user = os.stat("/proc/self/ns/user").st_ino
    uid, gid = os.getuid(), os.getgid()

    def moved() -> bytes:
        namespace._unshare_user_and_ipc("")
        return repr(
            (
                os.stat("/proc/self/ns/ipc").st_ino != host_ipc,
                os.stat("/proc/self/ns/user").st_ino != host_user,
                os.getuid(),
                os.getgid(),
                Path("/proc/self/uid_map").read_text().split(),
                Path("/proc/self/gid_map").read_text().split(),
                Path("/proc/self/setgroups").read_text().strip(),
            )
        ).encode()

    assert _in_child(moved) == repr(
        (True, True, 0, 0, ["0", str(uid), "1"], ["0", str(gid), "1"], "deny")
    )


@needs_ns
@needs_root
def test_full_user_namespace_quota_gives_enospc_with_the_sysctl_named() -> None:
    """A real ENOSPC: inside a user namespace of our own, user.max_user_namespaces=0."""

    def refused() -> bytes:
        _own_user_namespace(max_user_namespaces=0)
        return _error_line(lambda: namespace._unshare_user_and_ipc("root path refused"))

    assert _in_child(refused) == (
        f"{errno.ENOSPC} root path refused; unshare(CLONE_NEWUSER|CLONE_NEWIPC) failed: ENOSPC "
        "(user.max_user_namespaces or user.max_ipc_namespaces reached)"
    )


@needs_ns
@needs_root
def test_root_path_reports_a_refusal_other_than_eperm_and_detection_falls_back() -> None:
    """A real ENOSPC for root's unshare(CLONE_NEWIPC) (user.max_ipc_namespaces=0): no retry
    through a user namespace (only EPERM means "no CAP_SYS_ADMIN"), and detection reports it."""

    def refused() -> bytes:
        _own_user_namespace(max_ipc_namespaces=0)
        line = _error_line(namespace._unshare_ipc)
        return f"{line.decode()}\n{tuple(namespace._detect())!r}".encode()

    line, detection = _in_child(refused).split("\n")
    why = "unshare(CLONE_NEWIPC) failed: ENOSPC"
    assert line == f"{errno.ENOSPC} {why}"
    assert detection == repr((False, why, "", False, why))


@needs_ns
@needs_root
@pytest.mark.parametrize(
    ("failing", "code", "expected"),
    [
        (
            "/proc/self/uid_map",
            errno.EPERM,
            "writing /proc/self/uid_map failed: EPERM (user namespaces restricted, e.g. by an LSM)",
        ),
        ("/proc/self/gid_map", errno.EINVAL, "writing /proc/self/gid_map failed: EINVAL"),
        # setgroups missing (kernels before 3.19) is skipped, not an error; this kernel then
        # refuses gid_map for real, since "deny" was never written: the failure moves on.
        (
            "/proc/self/setgroups",
            errno.ENOENT,
            "writing /proc/self/gid_map failed: EPERM (user namespaces restricted, e.g. by an LSM)",
        ),
    ],
)
def test_map_write_failures_are_named_and_a_missing_setgroups_is_skipped(
    monkeypatch: pytest.MonkeyPatch, failing: str, code: int, expected: str
) -> None:
    """MOCK: ``_write_proc`` fails for one file (the others are written for real, after a real
    unshare in a child). An LSM that restricts user namespaces (EPERM) and kernels before 3.19
    (no setgroups file) are not available here; the errors are what those setups return."""
    real_write = namespace._write_proc

    def write_proc(path: str, text: str) -> None:
        if path == failing:
            raise OSError(code, os.strerror(code))
        real_write(path, text)

    monkeypatch.setattr(namespace, "_write_proc", write_proc)

    got = _in_child(lambda: _error_line(lambda: namespace._unshare_user_and_ipc("")))
    assert got == f"{errno.EPERM if code == errno.ENOENT else code} {expected}"


@needs_ns
@needs_root
def test_enter_takes_the_user_namespace_path_when_detection_chose_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """MOCK: the method detected at import is patched to "user+ipc" (what a non-root or
    container run detects); the move itself is real, in a child."""
    monkeypatch.setattr(namespace, "IPC_NAMESPACE_METHOD", "user+ipc")
    host_user = os.stat("/proc/self/ns/user").st_ino

    def entered() -> bytes:
        namespace.enter_new_ipc_namespace()
        return f"{os.stat('/proc/self/ns/user').st_ino != host_user} {os.getuid()}".encode()

    assert _in_child(entered) == "True 0"


# -- a handle on a namespace owned by another user namespace ------------------------------


@needs_ns
@needs_root
def test_handle_joins_user_then_ipc_namespace(user_ns_holder: Holder) -> None:
    key = 0x7E57_0001
    with NamespaceHandle.from_pid(user_ns_holder.pid, runner="setns") as handle:
        assert handle.has_user_namespace
        assert repr(handle) == (
            f"NamespaceHandle(pid={user_ns_holder.pid}, ipc:[{handle.ipc_inode}] +user, "
            "runner=setns)"
        )

        def joined() -> bytes:
            handle.enter()
            MessageQueue(key=key)  # left in the namespace, which dies with the last holder
            return str(os.getuid()).encode()

        assert _in_child(joined) == "0"
        assert f"0x{key:08x}" in handle.ipcs_text()

        def threaded() -> bytes:
            threading.Thread(target=time.sleep, args=(5,), daemon=True).start()
            return _error_line(handle.enter)

        # setns(CLONE_NEWUSER) needs a single-threaded caller: the kernel says EINVAL.
        assert _in_child(threaded) == (f"{errno.EINVAL} setns(user namespace) failed: EINVAL")
    assert repr(handle) == (f"NamespaceHandle(pid={user_ns_holder.pid}, closed, runner=setns)")
    assert user_ns_holder.finish() == 0


@needs_ns
@needs_root
def test_handle_enter_refused_to_an_unprivileged_process() -> None:
    """A real EPERM: a child that gave up root cannot setns into the IPC namespace."""
    holder = Holder(namespace.enter_new_ipc_namespace)
    try:
        assert holder.line == "ready"
        with NamespaceHandle.from_pid(holder.pid, runner="setns") as handle:
            assert not handle.has_user_namespace

            def unprivileged() -> bytes:
                os.setgroups([])
                os.setresgid(65534, 65534, 65534)
                os.setresuid(65534, 65534, 65534)
                return _error_line(handle.enter)

            assert _in_child(unprivileged) == (f"{errno.EPERM} setns(IPC namespace) failed: EPERM")
    finally:
        holder.close()


@needs_ns
def test_failing_commands_inside_become_oserrors_with_the_errno(tmp_path: Path) -> None:
    holder = Holder(namespace.enter_new_ipc_namespace)
    try:
        assert holder.line == "ready"
        with NamespaceHandle.from_pid(holder.pid) as handle:
            missing = tmp_path / "missing"
            with pytest.raises(OSError) as info:
                handle._checked(["cat", str(missing)], "reading it", 10)
            assert info.value.errno == errno.ENOENT
            assert str(info.value).endswith(f"reading it failed: cat: {missing}: {os.strerror(2)}")
            # No strerror text to recover from: EIO, and the exit status as the message.
            with pytest.raises(OSError) as info:
                handle._checked(["sh", "-c", "exit 3"], "the script", 10)
            assert (info.value.errno, info.value.strerror) == (
                errno.EIO,
                "the script failed: exit status 3",
            )
            with pytest.raises(ValueError, match="argv must not be empty"):
                handle.run([])
            if namespace.IPC_LIMITS:
                # msgmni above IPCMNI: the kernel refuses the write; the host is untouched.
                host = Path("/proc/sys/kernel/msgmni").read_text()
                with pytest.raises(OSError, match=r"setting kernel.msgmni=2147483647"):
                    handle.set_limit("msgmni", 2**31 - 1)
                assert Path("/proc/sys/kernel/msgmni").read_text() == host
    finally:
        holder.close()


@needs_ns
def test_runner_choice_is_checked_and_a_missing_nsenter_leaks_nothing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    holder = Holder(namespace.enter_new_ipc_namespace)
    try:
        assert holder.line == "ready"
        before = _fd_count()
        with pytest.raises(ValueError, match="runner must be 'nsenter' or 'setns', got 'su'"):
            NamespaceHandle.from_pid(holder.pid, runner="su")
        readlink = shutil.which("readlink")
        assert readlink is not None
        monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no nsenter on PATH
        with pytest.raises(FileNotFoundError, match="nsenter not found on PATH"):
            NamespaceHandle.from_pid(holder.pid, runner="nsenter")
        assert _fd_count() == before
        # Without nsenter the default runner joins with setns in the child.
        with NamespaceHandle.from_pid(holder.pid) as handle:
            assert handle.runner == "setns"
            ran = handle.run([readlink, "/proc/self/ns/ipc"])
            assert ran.stdout.strip() == f"ipc:[{handle.ipc_inode}]"
        assert _fd_count() == before
    finally:
        holder.close()


# -- the syscall wrappers and the probe's decisions (mocks of other platforms) ---------


def test_wrappers_use_os_unshare_and_os_setns_when_python_has_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """MOCK: ``os.unshare``/``os.setns`` (Python 3.12+) are replaced by recorders: this must
    not move the pytest process, and the interpreter here may not have them."""
    calls: list[tuple[int, ...]] = []
    monkeypatch.setattr(os, "unshare", lambda flags: calls.append((flags,)), raising=False)
    monkeypatch.setattr(os, "setns", lambda fd, nstype: calls.append((fd, nstype)), raising=False)
    namespace.unshare(CLONE_NEWIPC)
    namespace.setns(7, CLONE_NEWUSER)
    assert calls == [(CLONE_NEWIPC,), (7, CLONE_NEWUSER)]


def test_wrappers_without_os_functions_or_libc_say_enosys(monkeypatch: pytest.MonkeyPatch) -> None:
    """MOCK: no ``os.unshare``/``os.setns`` and no libc, as on a non-Linux platform."""
    monkeypatch.delattr(os, "unshare", raising=False)
    monkeypatch.delattr(os, "setns", raising=False)
    monkeypatch.setattr(namespace, "_libc", None)
    monkeypatch.setattr(sys, "platform", "sunos5")
    with pytest.raises(OSError, match=r"unshare\(\) is unavailable on sunos5") as info:
        namespace.unshare(CLONE_NEWIPC)
    assert info.value.errno == errno.ENOSYS
    with pytest.raises(OSError, match=r"setns\(\) is unavailable on sunos5") as info:
        namespace.setns(0, 0)
    assert info.value.errno == errno.ENOSYS
    assert namespace._load_libc() is None
    assert namespace._platform_reason() == "sunos5 has no IPC namespaces (Linux only)"
    with pytest.raises(OSError, match=r"sunos5 has no IPC namespaces \(Linux only\)"):
        namespace.enter_new_ipc_namespace()


def test_setns_on_a_file_that_is_no_namespace_is_einval() -> None:
    """A real failure through whichever wrapper this Python uses (libc before 3.12)."""
    fd = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
    try:
        with pytest.raises(OSError) as info:
            namespace.setns(fd, CLONE_NEWIPC)
        assert info.value.errno == errno.EINVAL
        assert info.value.strerror == os.strerror(errno.EINVAL)
    finally:
        os.close(fd)


def test_error_names() -> None:
    assert namespace._errname(None) == "unknown error"
    assert namespace._errname(errno.EPERM) == "EPERM"
    assert namespace._errname(99999) == "99999"
    assert namespace._errno_from_message("x: Permission denied") == errno.EACCES
    assert namespace._errno_from_message("nothing known", default=7) == 7


def _probe_answer(result: ChildResult | BaseException) -> Callable[..., ChildResult]:
    def fake(fn: Callable[[], bytes | None], timeout: float = 10.0) -> ChildResult:
        assert fn is namespace._probe_in_child
        if isinstance(result, BaseException):
            raise result
        return result

    return fake


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (
            TimeoutError("child 123 did not finish within 5s"),
            Detection(
                False,
                "IPC namespace probe failed: child 123 did not finish within 5s",
                "",
                False,
                "IPC namespace probe failed: child 123 did not finish within 5s",
            ),
        ),
        (
            ChildResult(0, 1, "died", -9),
            Detection(
                False,
                "IPC namespace probe failed (status -9): b''",
                "",
                False,
                "IPC namespace probe failed (status -9): b''",
            ),
        ),
        (
            ChildResult(0, 1, "returned", 0, b"ok user+ipc 13"),
            Detection(
                True,
                "",
                "user+ipc",
                False,
                "writing /proc/sys/kernel/msgmni inside a new IPC namespace failed: EACCES "
                "(this kernel lets only the initial user namespace's root set IPC sysctls)",
            ),
        ),
        (
            ChildResult(0, 1, "returned", 0, b"ok ipc 30"),
            Detection(
                True,
                "",
                "ipc",
                False,
                "writing /proc/sys/kernel/msgmni inside a new IPC namespace failed: EROFS",
            ),
        ),
    ],
)
def test_detection_turns_each_probe_outcome_into_a_decision(
    monkeypatch: pytest.MonkeyPatch, answer: ChildResult | BaseException, expected: Detection
) -> None:
    """MOCK: the probe child's answer is given (a probe that hangs or is killed, kernels that
    refuse IPC sysctls inside a namespace), since this machine's probe succeeds."""
    monkeypatch.delenv(namespace.DISABLE_ENV, raising=False)
    monkeypatch.setattr(namespace, "call_in_child", _probe_answer(answer))
    assert namespace._detect() == expected


def test_detection_without_proc_ns_ipc(monkeypatch: pytest.MonkeyPatch) -> None:
    """MOCK: ``/proc/self/ns/ipc`` reported missing (a kernel built without IPC namespaces)."""
    real_exists = os.path.exists
    monkeypatch.delenv(namespace.DISABLE_ENV, raising=False)
    monkeypatch.setattr(
        os.path, "exists", lambda p: False if p == "/proc/self/ns/ipc" else real_exists(p)
    )
    reason = "kernel without IPC namespaces (/proc/self/ns/ipc missing)"
    assert namespace._detect() == Detection(False, reason, "", False, reason)


@needs_ns
def test_probe_reports_a_limit_it_cannot_write() -> None:
    """A real failure of the probe's sysctl write: the child's /proc/sys is read-only for it
    once it has given up root (after its move), so the probe reports the errno."""

    def probe_then_drop() -> bytes:
        real_open = os.open

        def open_as_nobody(path: str, flags: int, *args: int) -> int:
            if path.startswith("/proc/sys/"):
                os.setgroups([])
                os.setresgid(65534, 65534, 65534)
                os.setresuid(65534, 65534, 65534)
            return real_open(path, flags, *args)

        os.open = open_as_nobody  # type: ignore[assignment]  # in the child only
        return namespace._probe_in_child()

    if os.geteuid() != 0:
        pytest.skip("needs root to give up")
    answer = _in_child(probe_then_drop)
    assert answer in (f"ok ipc {errno.EACCES}", f"ok ipc {errno.EPERM}"), answer
