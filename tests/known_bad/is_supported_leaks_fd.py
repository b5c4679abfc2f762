"""Defect: ``is_supported()`` probes SCM_RIGHTS for real and leaks the received fd.

Breaks SP-02: after the call the process holds one more descriptor (the copy
that came back through the probe's socket pair is never closed). Seed: the
pull request's ``isSupported()`` checked only that functions exist, and round 1's
reply shows why a real probe is wanted; this one is written carelessly.
"""

from __future__ import annotations

import array
import socket

from reference import MasterProxy

BREAKS = frozenset({"SP-02"})
SEED = "pull request: isSupported() checks only that functions exist"


class LeakyProbeProxy(MasterProxy):
    def is_supported(self) -> bool:
        if not super().is_supported():
            return False
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        with a, b:
            fds = array.array("i", [a.fileno()])
            a.sendmsg([b"x"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds.tobytes())])
            _msg, ancdata, _flags, _addr = b.recvmsg(1, socket.CMSG_SPACE(fds.itemsize))
        # The defect: the fd that arrived in ancdata is never closed.
        return bool(ancdata)
