"""ACME's own fixture named ``proxy_server`` works beside the toolkit's ``fdpass_`` ones."""

from __future__ import annotations

import socket

from acme_proxy import AcmeMasterProxy

from fdpass_conformance.fixtures.leaks import LeakCheck


def test_own_proxy_server_listens_on_loopback(
    proxy_server: tuple[AcmeMasterProxy, socket.socket],
) -> None:
    proxy, listener = proxy_server
    assert isinstance(proxy, AcmeMasterProxy)
    host, port = listener.getsockname()
    assert host == "127.0.0.1" and port > 0
    with socket.create_connection((host, port), timeout=5):
        pass


def test_own_fixture_and_the_toolkits_leak_check_together(
    fdpass_leak_check: LeakCheck, proxy_server: tuple[AcmeMasterProxy, socket.socket]
) -> None:
    # proxy_server is set up after the leak check's baseline and closed before its
    # teardown check: a proxy whose close() left its queue or listener would fail here.
    _, listener = proxy_server
    assert listener.fileno() >= 0
