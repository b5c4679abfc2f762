"""The plugin loads into every pytest run on the machine: its fixture names must not collide.

A downstream project with its own ``proxy_server`` would otherwise get ours or
shadow ours depending on conftest order.
"""

from __future__ import annotations

import re

import pytest

from .helpers import INNER_TIMEOUT

pytestmark = pytest.mark.timeout(120)

OWN_FIXTURES = """
import pytest

@pytest.fixture
def proxy_server():
    return "downstream proxy_server"

@pytest.fixture
def leak_check():
    return "downstream leak_check"

@pytest.fixture
def sysv_queue():
    return "downstream sysv_queue"
"""

USES_BOTH = """
from fdpass_conformance.sysv import MessageQueue

def test_own_fixtures_win(proxy_server, leak_check, sysv_queue):
    assert proxy_server == "downstream proxy_server"
    assert leak_check == "downstream leak_check"
    assert sysv_queue == "downstream sysv_queue"

def test_toolkit_fixtures_still_there(fdpass_sysv_queue, fdpass_proxy_server):
    assert isinstance(fdpass_sysv_queue, MessageQueue)
    assert callable(fdpass_proxy_server)
"""


def test_downstream_fixtures_keep_their_names(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(OWN_FIXTURES)
    pytester.makepyfile(test_mine=USES_BOTH)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=INNER_TIMEOUT)
    result.assert_outcomes(passed=2)


def test_every_plugin_fixture_is_prefixed(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_subprocess(
        "--fixtures", "-v", "-p", "no:cacheprovider", timeout=INNER_TIMEOUT
    )
    ours = re.findall(
        r"^(\w+)(?: \[\w+ scope\])? -- \S*fdpass_conformance/\S+$", result.stdout.str(), re.M
    )
    assert len(ours) >= 8, result.stdout.str()  # the listing format changed if none matched
    assert [name for name in ours if not name.startswith("fdpass_")] == []
