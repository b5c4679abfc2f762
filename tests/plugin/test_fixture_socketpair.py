"""fdpass_unix_socketpair with the fdtransfer helpers: real fds cross, MSG_CTRUNC is detected."""

from __future__ import annotations

import sys

import pytest

from .helpers import INNER_TIMEOUT

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="counts fds in /proc"),
]

USES_PAIR = """
import errno
import os
import resource
import socket

import pytest

from fdpass_conformance.fdtransfer import recv_fds, send_fds

SEEN = []


def open_fds():
    return len(os.listdir("/proc/self/fd"))


def test_pair_type(fdpass_unix_socketpair):
    a, b = fdpass_unix_socketpair
    SEEN.extend(fdpass_unix_socketpair)
    assert a.family == b.family == socket.AF_UNIX
    assert a.type == b.type == socket.SOCK_SEQPACKET


def test_pair_closed_after_the_test():
    assert len(SEEN) == 2
    assert [s.fileno() for s in SEEN] == [-1, -1]


def test_fds_cross(fdpass_unix_socketpair):
    a, b = fdpass_unix_socketpair
    r, w = os.pipe()
    try:
        send_fds(a, [r, w], b"hi")
        data, fds = recv_fds(b, 2, bufsize=16)
        try:
            assert data == b"hi" and len(fds) == 2
            assert [os.get_inheritable(fd) for fd in fds] == [False, False]
            assert os.fstat(fds[0]).st_ino == os.fstat(r).st_ino
            os.write(fds[1], b"z")
            assert os.read(r, 1) == b"z"
        finally:
            for fd in fds:
                os.close(fd)
    finally:
        os.close(r)
        os.close(w)


def test_eof(fdpass_unix_socketpair):
    a, b = fdpass_unix_socketpair
    a.close()
    with pytest.raises(EOFError):
        recv_fds(b, 1)


def test_empty_data_is_refused(fdpass_unix_socketpair):
    a, _ = fdpass_unix_socketpair
    with pytest.raises(ValueError, match="must not be empty"):
        send_fds(a, [0], b"")


def test_more_fds_than_maxfds_is_ctrunc(fdpass_unix_socketpair):
    a, b = fdpass_unix_socketpair
    r, w = os.pipe()
    try:
        before = open_fds()
        send_fds(a, [r, w, r], b"x")
        with pytest.raises(OSError) as info:
            recv_fds(b, 1)
        assert info.value.errno == errno.EMFILE
        assert "MSG_CTRUNC" in str(info.value)
        assert open_fds() == before
    finally:
        os.close(r)
        os.close(w)


def fill_table_then_receive(b):
    def worker(i):
        highest = max(int(name) for name in os.listdir("/proc/self/fd"))
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 8, hard))
        spare = []
        while True:
            try:
                spare.append(os.dup(b.fileno()))
            except OSError as exc:
                assert exc.errno == errno.EMFILE
                break
        try:
            recv_fds(b, 1)
        except OSError as exc:
            first = (exc.errno, str(exc))
        else:
            first = None
        os.close(spare.pop())
        data, fds = recv_fds(b, 1)
        return first, data, os.fstat(fds[0]).st_ino

    return worker


def test_full_fd_table_in_a_forked_child(fdpass_unix_socketpair, fdpass_forked_workers):
    a, b = fdpass_unix_socketpair
    group = fdpass_forked_workers(1, fill_table_then_receive(b), deadline=20)
    r1, w1 = os.pipe()
    r2, w2 = os.pipe()
    try:
        send_fds(a, [r1], b"1")
        send_fds(a, [r2], b"2")
        os.close(r1)
        os.close(r2)
        (result,) = group.results()
        first, data, inode = result.get()
        assert first is not None, "the fd arrived although the fd table was full"
        assert first[0] == errno.EMFILE and "MSG_CTRUNC" in first[1]
        assert data == b"2" and inode == os.fstat(w2).st_ino
        # The kernel dropped the first fd: no process holds that pipe's read end.
        with pytest.raises(BrokenPipeError):
            os.write(w1, b"x")
    finally:
        os.close(w1)
        os.close(w2)
"""


def test_socketpair_and_fdtransfer(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_pair=USES_PAIR)
    result = pytester.runpytest_subprocess("-v", timeout=INNER_TIMEOUT)
    result.assert_outcomes(passed=7)
