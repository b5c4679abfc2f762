"""Defect: fds are sent without ``MSG_NOSIGNAL``.

The channels are ``SOCK_STREAM`` socket pairs (what PHP's ``stream_socket_pair``
gives, and what the reference uses where SOCK_SEQPACKET is missing); a send on
a stream whose peer is gone raises SIGPIPE unless ``MSG_NOSIGNAL`` is passed.
Python ignores SIGPIPE, which hides this; a master that runs with the default
disposition (as a C or PHP master does, and as the FP-08/FP-09 checks set up)
is killed on the first send to a dead worker's channel. Breaks FP-08 (the
master dies instead of re-routing) and FP-09 (with every worker dead, the
master dies instead of raising ``OSError``). (On Linux a SOCK_SEQPACKET pair
reports EPIPE without SIGPIPE, so there the same omission would go unnoticed.)

FLT-05 fails as well ("master-alive": its master runs with SIGPIPE at the
default too, and dies on the first send after a worker kill).
"""

from __future__ import annotations

import array
import socket

from reference import MasterProxy

BREAKS = frozenset({"FP-08", "FP-09", "FLT-05"})


class SigpipeProxy(MasterProxy):
    def _channel_pair(self) -> tuple[socket.socket, socket.socket]:
        return socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)

    def _send_fd(self, chan: socket.socket, fd: int, tag: bytes) -> None:
        chan.sendmsg(
            [tag],
            [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]).tobytes())],
            socket.MSG_DONTWAIT,  # the defect: no MSG_NOSIGNAL
        )
