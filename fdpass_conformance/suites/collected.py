"""The suites as the plugin collects them: once per ``--fdpass-impl``."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from ..loading import ImplSpec
from . import ContractSuite


class TestContract(ContractSuite):
    @pytest.fixture
    def impl(self, fdpass_impl: ImplSpec) -> Callable[[], object]:
        return fdpass_impl.factory
