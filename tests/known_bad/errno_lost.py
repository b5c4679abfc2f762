"""Defect: every failure of ``create_socket`` is re-raised as ``OSError(message)``.

The message is fine, but the errno is gone (``exc.errno is None``), as with
PHP's ``error_get_last()`` (seed round 3 #1, the "fix" of round 2 #1) or the
``sysv_ipc`` binding's ENOSPC. Breaks SP-18 (the errno of the failing call is
lost), SP-08 (a port in use is not ``EADDRINUSE``) and IPC-06 (the msgget
failure is not ``ENOSPC``).
"""

from __future__ import annotations

import socket

from fdpass_conformance.contract import ProtocolType
from reference import MasterProxy

BREAKS = frozenset({"SP-18", "SP-08", "IPC-06"})
SEED = "round 3 #1: error_get_last() instead of socket_last_error(), still no errno"


class ErrnoLostProxy(MasterProxy):
    def create_socket(
        self, port: int, protocol: ProtocolType | str = ProtocolType.TCP
    ) -> socket.socket:
        try:
            return super().create_socket(port, protocol)
        except OSError as exc:
            raise OSError(f"create_socket failed: {exc}") from None  # the defect: errno None
