"""A master that dies during a step is reported with its status and, where known, the cause."""

from __future__ import annotations

import os
import signal
import socket

import pytest

from fdpass_conformance.harness.server import HarnessError, ProxyServer, ServerOptions
from reference import MasterProxy


class SigpipeOnListen(MasterProxy):
    """Dies as a master does that writes to a dead peer without MSG_NOSIGNAL."""

    def create_socket(self, port: int = 0, protocol: object = "tcp") -> socket.socket:
        os.kill(os.getpid(), signal.SIGPIPE)
        raise AssertionError("unreachable: SIGPIPE at its default action kills")


def _sigpipe_default() -> None:
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)


@pytest.mark.timeout(60)
def test_a_master_killed_by_sigpipe_is_told_about_msg_nosignal() -> None:
    server = ProxyServer(SigpipeOnListen, ServerOptions(master_setup=_sigpipe_default))
    try:
        with pytest.raises(HarnessError) as info:
            server.start()
    finally:
        server.close()
    text = str(info.value)
    assert "exited during 'call' (status killed by SIGPIPE)" in text, text
    assert "MSG_NOSIGNAL" in text and "send_fds" in text, text
