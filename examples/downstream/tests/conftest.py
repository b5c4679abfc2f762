"""ACME's own fixtures, next to the toolkit's.

``proxy_server`` is ACME's name for a proxy listening in the test process.
The toolkit's plugin registers only ``fdpass_``-prefixed fixtures
(``fdpass_proxy_server`` forks a whole server), so the two never collide.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from acme_proxy import AcmeMasterProxy


@pytest.fixture
def proxy_server() -> Iterator[tuple[AcmeMasterProxy, socket.socket]]:
    """An AcmeMasterProxy listening on an ephemeral loopback port, closed at teardown."""
    proxy = AcmeMasterProxy()
    listener = proxy.create_socket(0)
    yield proxy, listener
    proxy.close()
