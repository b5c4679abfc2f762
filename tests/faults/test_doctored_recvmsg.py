"""FLT-06's doctored recvmsg returns only what the kernel could return to that very call.

Checked against the real kernel: the number of fds it delivers into a control
buffer of a given size is what ``_room_for_fds`` predicts, and the doctored
"one fd too many" result is the extra fd where the buffer has room, and the
real fds with MSG_CTRUNC where it does not.
"""

from __future__ import annotations

import array
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from fdpass_conformance.suites.test_flt import _doctor_fd_messages, _room_for_fds

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="the buffer arithmetic checked is Linux's"
)

FD = array.array("i").itemsize
BUFFERS = {
    "CMSG_LEN(1 fd)": socket.CMSG_LEN(FD),  # socket.recv_fds(sock, n, 1)
    "CMSG_SPACE(1 fd)": socket.CMSG_SPACE(FD),  # rounds up: room for 2 on 64-bit
    "CMSG_SPACE(4 fds)": socket.CMSG_SPACE(4 * FD),
}


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with a, b:
        yield a, b


def _send(sock: socket.socket, count: int) -> None:
    with open(os.devnull, "rb") as null:
        fds = [null.fileno()] * count
        sock.sendmsg([b"x"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])


def _fds(ancdata: list[tuple[int, int, bytes]]) -> list[int]:
    out = array.array("i")
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            out.frombytes(data[: len(data) - len(data) % FD])
    return list(out)


@pytest.mark.parametrize("size", list(BUFFERS.values()), ids=list(BUFFERS))
def test_room_is_what_the_kernel_delivers(
    pair: tuple[socket.socket, socket.socket], size: int
) -> None:
    a, b = pair
    _send(a, 6)
    _data, ancdata, flags, _ = b.recvmsg(1, size)
    got = _fds(ancdata)
    for fd in got:
        os.close(fd)
    assert len(got) == min(6, _room_for_fds(size, ancdata, 0)), (size, len(got), ancdata)
    assert flags & socket.MSG_CTRUNC, f"6 fds into {size} bytes came without MSG_CTRUNC"


@pytest.mark.parametrize("name", list(BUFFERS))
def test_extra_fd_only_where_it_fits(
    pair: tuple[socket.socket, socket.socket], tmp_path: Path, name: str
) -> None:
    size = BUFFERS[name]
    marker = tmp_path / "marker"
    original = socket.socket.recvmsg
    try:
        _doctor_fd_messages("extra-fd", str(marker), nth=1)(0)
        a, b = pair
        _send(a, 1)
        _data, ancdata, flags, _ = b.recvmsg(1, size)
    finally:
        socket.socket.recvmsg = original  # type: ignore[method-assign]
    got = _fds(ancdata)
    for fd in got:
        os.close(fd)
    room = _room_for_fds(size, ancdata[:0], 0)
    how = marker.read_text(encoding="ascii").split()[0]
    if room >= 2:
        assert (how, len(got), flags & socket.MSG_CTRUNC) == ("extra-fd", 2, 0), (name, how)
    else:
        assert how == "extra-fd-truncated" and len(got) == 1, (name, how, got)
        assert flags & socket.MSG_CTRUNC, f"{name}: the dropped extra fd did not set MSG_CTRUNC"
