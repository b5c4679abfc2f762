"""IPC namespaces: an exact ``ipcs`` view and private kernel limits for the server under test.

Why: ``ipcs`` lists every System V object of the IPC namespace, whoever made
it. When the master child of the harness moves into a namespace of its own,
``ipcs`` run there lists exactly the implementation's objects (an exact leak
check, safe under pytest-xdist), and ``kernel.msgmni``/``msgmnb``/``msgmax``
(which are per IPC namespace) can be lowered to inject IPC-06 faults without
touching the host.

Capability detection runs once, at import, like pytest-timeout's platform
check, and picks one of two explicit paths:

* ``IPC_NAMESPACES`` true: :func:`enter_new_ipc_namespace` in the forked
  master child, then :meth:`NamespaceHandle.from_pid` on the pytest side.
* ``IPC_NAMESPACES`` false: ``IPC_NAMESPACE_REASON`` says why in one line and
  the harness falls back to a global ``ipcs`` diff under a lock
  (:mod:`fdpass_conformance.harness.isolation`).

Detection forks a tiny child that really tries it (root: ``unshare(CLONE_NEWIPC)``;
otherwise ``unshare(CLONE_NEWUSER|CLONE_NEWIPC)`` plus uid/gid maps), with a
deadline, and reaps it. Setting ``FDPASS_CONFORMANCE_NO_IPC_NAMESPACE=1`` in
the environment forces the fallback (to test it on a capable machine).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from typing import Final, NamedTuple

from fdpass_conformance.processes import call_in_child

CLONE_NEWIPC: Final = 0x08000000
CLONE_NEWUSER: Final = 0x10000000

#: The per-IPC-namespace limits that :meth:`NamespaceHandle.set_limit` may change.
LIMIT_NAMES: Final = ("msgmni", "msgmnb", "msgmax")

#: Environment variable that forces the no-namespace path.
DISABLE_ENV: Final = "FDPASS_CONFORMANCE_NO_IPC_NAMESPACE"

_PROBE_TIMEOUT: Final = 5.0
_INT_MAX: Final = 2**31 - 1


def _errname(code: int | None) -> str:
    """``EPERM`` rather than ``1``: the symbolic name is what people search for."""
    if code is None:
        return "unknown error"
    return errno.errorcode.get(code, str(code))


def _load_libc() -> ctypes.CDLL | None:
    """libc with ``unshare``/``setns`` typed, on Linux only (Python < 3.12 lacks ``os.unshare``)."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    libc.unshare.argtypes = [ctypes.c_int]
    libc.unshare.restype = ctypes.c_int
    libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.setns.restype = ctypes.c_int
    return libc


_libc = _load_libc()


def unshare(flags: int) -> None:
    """``unshare(2)``: ``os.unshare`` on 3.12+, libc through ctypes before; OSError on failure."""
    fn = getattr(os, "unshare", None)
    if fn is not None:
        fn(flags)
        return
    if _libc is None:
        raise OSError(errno.ENOSYS, f"unshare() is unavailable on {sys.platform}")
    if _libc.unshare(flags) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def setns(fd: int, nstype: int) -> None:
    """``setns(2)``: ``os.setns`` on 3.12+, libc through ctypes before; OSError on failure."""
    fn = getattr(os, "setns", None)
    if fn is not None:
        fn(fd, nstype)
        return
    if _libc is None:
        raise OSError(errno.ENOSYS, f"setns() is unavailable on {sys.platform}")
    if _libc.setns(fd, nstype) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def _write_proc(path: str, text: str) -> None:
    """Write a /proc file in one ``write`` (uid_map/gid_map accept exactly one)."""
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _unshare_user_and_ipc(root_failure: str) -> None:
    """Unprivileged path: a new user namespace (we are its root) owning a new IPC namespace.

    Our uid/gid map to 0 inside, as ``unshare -Ur`` does, so that the process
    and anything run later through ``nsenter`` hold the capabilities that the
    namespace's IPC sysctls require.
    """
    uid, gid = os.getuid(), os.getgid()  # before unshare: afterwards they read as overflow ids
    try:
        unshare(CLONE_NEWUSER | CLONE_NEWIPC)
    except OSError as exc:
        if exc.errno == errno.EPERM:
            who = "root without CAP_SYS_ADMIN" if os.geteuid() == 0 else "not root"
            hint = f" ({who} and unprivileged user namespaces disabled)"
        elif exc.errno == errno.EINVAL:
            hint = " (the calling process is multi-threaded; call it right after fork)"
        elif exc.errno == errno.ENOSPC:
            hint = " (user.max_user_namespaces or user.max_ipc_namespaces reached)"
        else:
            hint = ""
        prefix = f"{root_failure}; " if root_failure else ""
        raise OSError(
            exc.errno,
            f"{prefix}unshare(CLONE_NEWUSER|CLONE_NEWIPC) failed: {_errname(exc.errno)}{hint}",
        ) from None
    steps = [("/proc/self/uid_map", f"0 {uid} 1\n"), ("/proc/self/setgroups", "deny\n")]
    steps.append(("/proc/self/gid_map", f"0 {gid} 1\n"))
    for path, text in steps:
        try:
            _write_proc(path, text)
        except OSError as exc:
            if path.endswith("setgroups") and exc.errno == errno.ENOENT:
                continue  # kernels before 3.19 have no setgroups file and need no "deny"
            hint = (
                " (user namespaces restricted, e.g. by an LSM)" if exc.errno == errno.EPERM else ""
            )
            raise OSError(
                exc.errno, f"writing {path} failed: {_errname(exc.errno)}{hint}"
            ) from None


def _unshare_ipc() -> str:
    """Move the calling, single-threaded process into a new IPC namespace; return the method.

    Root tries ``unshare(CLONE_NEWIPC)`` first; root without CAP_SYS_ADMIN
    (a container) and non-root fall back to a new user namespace owning it.
    On failure after a partial move the process is unusable: exit it.
    """
    root_failure = ""
    if os.geteuid() == 0:
        try:
            unshare(CLONE_NEWIPC)
            return "ipc"
        except OSError as exc:
            if exc.errno != errno.EPERM:
                raise OSError(
                    exc.errno, f"unshare(CLONE_NEWIPC) failed: {_errname(exc.errno)}"
                ) from None
            root_failure = "unshare(CLONE_NEWIPC) failed: EPERM (root without CAP_SYS_ADMIN)"
    _unshare_user_and_ipc(root_failure)
    return "user+ipc"


def _probe_in_child() -> bytes:
    """Runs in the probe child: try the move, then try writing a limit back unchanged."""
    try:
        method = _unshare_ipc()
    except OSError as exc:
        return f"err {exc.errno} {exc.strerror}".encode()
    path = "/proc/sys/kernel/msgmni"
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        try:
            value = os.read(fd, 64)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, value)
        finally:
            os.close(fd)
    except OSError as exc:
        return f"ok {method} {exc.errno}".encode()
    return f"ok {method} 0".encode()


class Detection(NamedTuple):
    """What the import-time probe found (see the module constants)."""

    namespaces: bool
    reason: str
    method: str
    limits: bool
    limits_reason: str


def _unavailable(why: str) -> Detection:
    return Detection(False, why, "", False, why)


def _platform_reason() -> str:
    """Why this platform has no IPC namespaces at all, or "" on Linux."""
    if sys.platform == "darwin":
        return "macOS has no IPC namespaces"
    if not sys.platform.startswith("linux"):
        return f"{sys.platform} has no IPC namespaces (Linux only)"
    return ""


def _detect() -> Detection:
    """Find out, by a real attempt in a forked child, which path this machine takes."""
    if _platform_reason():
        return _unavailable(_platform_reason())
    if os.environ.get(DISABLE_ENV, "") not in ("", "0"):
        return _unavailable(f"disabled by {DISABLE_ENV}")
    if not os.path.exists("/proc/self/ns/ipc"):
        return _unavailable("kernel without IPC namespaces (/proc/self/ns/ipc missing)")
    try:
        result = call_in_child(_probe_in_child, timeout=_PROBE_TIMEOUT)
    except (OSError, TimeoutError) as exc:
        return _unavailable(f"IPC namespace probe failed: {exc}")
    words = result.output.decode(errors="replace").split(" ", 2)
    if result.status != 0 or len(words) < 3:
        return _unavailable(
            f"IPC namespace probe failed (status {result.status}): {result.output[:200]!r}"
        )
    if words[0] == "err":
        return _unavailable(words[2])
    method, limit_errno = words[1], int(words[2])
    if limit_errno == 0:
        return Detection(True, "", method, True, "")
    why = (
        "writing /proc/sys/kernel/msgmni inside a new IPC namespace failed: "
        f"{_errname(limit_errno)}"
    )
    if method == "user+ipc":
        why += " (this kernel lets only the initial user namespace's root set IPC sysctls)"
    return Detection(True, "", method, False, why)


DETECTION: Final = _detect()

#: True when a forked child can move into a new IPC namespace on this machine.
IPC_NAMESPACES: Final[bool] = DETECTION.namespaces
#: Why not, in one line ("" when ``IPC_NAMESPACES``).
IPC_NAMESPACE_REASON: Final[str] = DETECTION.reason
#: ``"ipc"`` (CLONE_NEWIPC alone, as root), ``"user+ipc"`` (through a user namespace) or "".
IPC_NAMESPACE_METHOD: Final[str] = DETECTION.method
#: True when msgmni/msgmnb/msgmax can be changed inside such a namespace.
IPC_LIMITS: Final[bool] = DETECTION.limits
#: Why not, in one line ("" when ``IPC_LIMITS``).
IPC_LIMITS_REASON: Final[str] = DETECTION.limits_reason


def enter_new_ipc_namespace() -> None:
    """Move the calling process into a new IPC namespace; call it in a freshly forked child.

    The process must be single-threaded (right after ``fork``) for the user
    namespace path. Raises OSError with the failing call's errno and a one-line
    message; after a failure the child should exit, since it may be half-moved.
    On the user namespace path (``IPC_NAMESPACE_METHOD == "user+ipc"``) the
    process sees itself as uid 0 afterwards (``unshare -Ur`` semantics).
    """
    if _platform_reason():
        raise OSError(errno.ENOSYS, f"IPC namespaces unavailable: {_platform_reason()}")
    if IPC_NAMESPACE_METHOD == "user+ipc":
        _unshare_user_and_ipc("")
    else:
        _unshare_ipc()


@contextlib.contextmanager
def calling_thread_in_new_ipc_namespace() -> Iterator[bool]:
    """Run the body with the calling thread in a fresh IPC namespace; yield whether it moved.

    Why: a test in the pytest process (the ``fdpass_leak_check`` fixture) that
    diffs the host's ``ipcs`` sees the queues of tests running beside it under
    pytest-xdist, whatever lock it holds, since those tests take none. In a
    namespace of its own, ``ipcs`` (forked from this thread) lists exactly its
    objects, and whatever it leaked vanishes with the namespace once the thread
    is moved back. Only root with CAP_SYS_ADMIN can move back (``setns``), and
    ``unshare(CLONE_NEWIPC)`` alone, unlike a user namespace, is allowed in a
    multi-threaded process such as a pytest-xdist worker; elsewhere this yields
    False and moves nothing, and the caller takes the lock fallback.
    """
    if IPC_NAMESPACE_METHOD != "ipc":
        yield False
        return
    home = os.open("/proc/thread-self/ns/ipc", os.O_RDONLY | os.O_CLOEXEC)
    try:
        try:
            unshare(CLONE_NEWIPC)
        except OSError:
            yield False
            return
        try:
            yield True
        finally:
            setns(home, CLONE_NEWIPC)
    finally:
        os.close(home)


def _errno_from_message(message: str, default: int = errno.EIO) -> int:
    """Recover an errno from a tool's ``strerror`` text (sh, cat, ipcs print it, not the code)."""
    for code in sorted(errno.errorcode):
        if os.strerror(code) in message:
            return code
    return default


def _one_line(text: str) -> str:
    return " / ".join(line.strip() for line in text.strip().splitlines() if line.strip())


def _ns_inode(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


class NamespaceHandle:
    """Holds an IPC namespace open from the pytest side and runs commands inside it.

    ``from_pid`` opens ``/proc/PID/ns/ipc`` (and ``/proc/PID/ns/user`` when it
    differs from ours) and keeps the fds: an open namespace fd keeps the
    namespace, and every object in it, alive after all its processes died, so
    ``ipcs``/``ipcrm`` still work for post-mortem leak checks. After
    :meth:`close` and the exit of the namespace's last process the kernel
    destroys the namespace and all its objects.

    Commands run through ``nsenter --ipc=/proc/self/fd/N`` (plus ``--user``
    for the unprivileged case) when nsenter exists: nothing but exec happens
    in the forked child, which stays safe when pytest has threads. Without
    nsenter the child calls ``setns`` in ``preexec_fn`` instead.
    """

    def __init__(self, pid: int, ipc_fd: int, user_fd: int | None, runner: str) -> None:
        """Use :meth:`from_pid`; this takes ownership of the given fds (closed if it raises)."""
        if runner not in ("nsenter", "setns"):
            for fd in (ipc_fd, user_fd):
                if fd is not None:
                    os.close(fd)
            raise ValueError(f"runner must be 'nsenter' or 'setns', got {runner!r}")
        self.pid = pid
        self.runner = runner
        self._ipc_fd: int | None = ipc_fd
        self._user_fd = user_fd
        self.ipc_inode = os.fstat(ipc_fd).st_ino
        self._nsenter = shutil.which("nsenter") if runner == "nsenter" else None
        if runner == "nsenter" and self._nsenter is None:
            self.close()
            raise FileNotFoundError(errno.ENOENT, "nsenter not found on PATH")

    @classmethod
    def from_pid(cls, pid: int, *, runner: str | None = None) -> NamespaceHandle:
        """Open the IPC namespace of live process ``pid`` (an unreaped child, typically).

        Call it while ``pid`` is alive (a zombie has no namespaces left).
        Raises ValueError if ``pid`` shares our IPC namespace: a handle there
        would change the host's limits. ``runner`` forces "nsenter" or "setns".
        """
        if _platform_reason():
            raise OSError(errno.ENOSYS, f"IPC namespaces unavailable: {_platform_reason()}")
        if runner is None:
            runner = "nsenter" if shutil.which("nsenter") else "setns"
        ipc_path = f"/proc/{pid}/ns/ipc"
        ipc_fd = os.open(ipc_path, os.O_RDONLY | os.O_CLOEXEC)
        user_fd: int | None = None
        try:
            st = os.fstat(ipc_fd)
            if (st.st_dev, st.st_ino) == _ns_inode("/proc/self/ns/ipc"):
                raise ValueError(
                    f"pid {pid} is in this process's IPC namespace; refusing a handle on the host's"
                )
            user_fd = os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
            ust = os.fstat(user_fd)
            if (ust.st_dev, ust.st_ino) == _ns_inode("/proc/self/ns/user"):
                os.close(user_fd)
                user_fd = None
        except BaseException:
            os.close(ipc_fd)
            if user_fd is not None:
                os.close(user_fd)
            raise
        return cls(pid, ipc_fd, user_fd, runner)

    @property
    def closed(self) -> bool:
        return self._ipc_fd is None

    @property
    def has_user_namespace(self) -> bool:
        """True when the namespace is owned by a user namespace other than ours."""
        return self._user_fd is not None

    def _fds(self) -> tuple[int, int | None]:
        if self._ipc_fd is None:
            raise ValueError("NamespaceHandle is closed")
        return self._ipc_fd, self._user_fd

    def enter(self) -> None:
        """Join the namespace (user first, then IPC); call it in a freshly forked child only.

        Joining a user namespace requires a single-threaded process, which is
        why this belongs right after ``fork`` (or in ``preexec_fn``).
        """
        ipc_fd, user_fd = self._fds()
        joins = [(user_fd, CLONE_NEWUSER, "user"), (ipc_fd, CLONE_NEWIPC, "IPC")]
        for fd, kind, what in joins:  # the user namespace first: it owns the IPC one
            if fd is None:
                continue
            try:
                setns(fd, kind)
            except OSError as exc:
                raise OSError(
                    exc.errno, f"setns({what} namespace) failed: {_errname(exc.errno)}"
                ) from None

    def run(self, argv: Sequence[str], timeout: float = 10.0) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside the namespace, capturing text output; never longer than ``timeout``.

        Returns the CompletedProcess whatever the exit status (check
        ``returncode``). On timeout the command is killed and
        ``subprocess.TimeoutExpired`` propagates.
        """
        ipc_fd, user_fd = self._fds()
        if not argv:
            raise ValueError("argv must not be empty")
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        if self._nsenter is not None:
            cmd = [self._nsenter]
            fds = [ipc_fd]
            if user_fd is not None:
                # --preserve-credentials: our uid is already root inside (uid_map "0 UID 1");
                # without it nsenter calls setgroups(), which "deny" forbids.
                cmd += [f"--user=/proc/self/fd/{user_fd}", "--preserve-credentials"]
                fds.append(user_fd)
            cmd += [f"--ipc=/proc/self/fd/{ipc_fd}", "--", *argv]
            return subprocess.run(
                cmd,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout,
                pass_fds=fds,
                check=False,
            )
        return subprocess.run(
            list(argv),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            preexec_fn=self.enter,
            check=False,
        )

    def _checked(self, argv: Sequence[str], what: str, timeout: float) -> str:
        result = self.run(argv, timeout)
        if result.returncode != 0:
            message = _one_line(result.stderr) or f"exit status {result.returncode}"
            raise OSError(_errno_from_message(message), f"{what} failed: {message}")
        return result.stdout

    @staticmethod
    def _limit_path(name: str) -> str:
        if name not in LIMIT_NAMES:
            raise ValueError(f"unknown limit {name!r}; expected one of {', '.join(LIMIT_NAMES)}")
        return f"/proc/sys/kernel/{name}"

    def get_limit(self, name: str, timeout: float = 10.0) -> int:
        """Read ``kernel.NAME`` as seen inside the namespace."""
        path = self._limit_path(name)
        text = self._checked(["cat", path], f"reading kernel.{name} in the IPC namespace", timeout)
        return int(text.strip())

    def set_limit(self, name: str, value: int, timeout: float = 10.0) -> None:
        """Set ``kernel.NAME`` inside the namespace only (msgmni, msgmnb or msgmax).

        The value is read back: a kernel that clamps or rejects it raises OSError
        rather than leaving a test to run against a limit it did not ask for.
        """
        path = self._limit_path(name)
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"limit value must be an int, got {type(value).__name__}")
        if not 0 <= value <= _INT_MAX:
            raise ValueError(f"limit value must be within 0..{_INT_MAX}, got {value}")
        script = 'printf "%s\\n" "$1" > "$2"'
        what = f"setting kernel.{name}={value} in the IPC namespace"
        self._checked(["sh", "-c", script, "sh", str(value), path], what, timeout)
        got = self.get_limit(name, timeout)
        if got != value:
            raise OSError(errno.EINVAL, f"{what}: the kernel kept {got}")

    def ipcs_text(self, timeout: float = 10.0) -> str:
        """``ipcs -q -m -s`` as run inside the namespace: exactly its objects."""
        return self._checked(["ipcs", "-q", "-m", "-s"], "ipcs in the IPC namespace", timeout)

    def close(self) -> None:
        """Release the namespace fds; idempotent. The namespace dies with its last process."""
        fds = (self._ipc_fd, self._user_fd)
        self._ipc_fd = None
        self._user_fd = None
        for fd in fds:
            if fd is not None:
                os.close(fd)

    def __enter__(self) -> NamespaceHandle:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"ipc:[{self.ipc_inode}]"
        user = " +user" if self._user_fd is not None else ""
        return f"NamespaceHandle(pid={self.pid}, {state}{user}, runner={self.runner})"
