"""What every contract suite class shares: the implementation, applicability, servers.

A suite class runs against ``factory`` when a subclass sets it
(``class TestMine(ContractSuite): factory = MyProxy``), or against each
``--fdpass-impl`` when the plugin collects it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, Protocol

import pytest

from ..catalogue import BY_ID, applicable, applicable_classes
from ..fixtures.server import ProxyServerFactory
from ..harness.server import ProxyServer
from ..outcomes import blocked, not_applicable
from ..runstate import run_options
from .applicability import CONSTRUCTED, facts_for

#: ``@needs("served")``: the check needs a connection served end to end; when the
#: proxy has shown it serves none, the check is blocked by the owner at once.
needs = pytest.mark.fdpass_needs


class StartServer(Protocol):
    def __call__(self, *, upto: str = ..., **options: Any) -> ProxyServer: ...


def requirement_ids(item: pytest.Item) -> list[str]:
    return [str(a) for m in item.iter_markers("requirement") for a in m.args]


class SuiteBase:
    #: The implementation's zero-argument factory; subclasses set it.
    factory: ClassVar[Callable[[], object] | None] = None

    @pytest.fixture
    def impl(self) -> Callable[[], object]:
        factory = type(self).factory
        if factory is None:
            raise pytest.UsageError(
                f"{type(self).__name__}: set `factory = YourProxy` on the ContractSuite subclass"
            )
        return factory

    @pytest.fixture(autouse=True)
    def _fdpass_applicability(
        self, request: pytest.FixtureRequest, impl: Callable[[], object]
    ) -> None:
        facts = facts_for(impl)
        if not facts.supported:
            pytest.skip("is_supported() returned False on this platform")
        ids = requirement_ids(request.node)
        reqs = [BY_ID[i] for i in ids if i in BY_ID]
        if reqs and not any(applicable(r, facts.fd_passing, facts.creates_ipc) for r in reqs):
            classes = applicable_classes(facts.fd_passing, facts.creates_ipc)
            if reqs[0].cls == "IPC" and "IPC" not in classes:  # else IPC-08: no dispatch
                not_applicable("creates no System V IPC object (observed through ipcs)")
            not_applicable("not an fd-passing proxy (no dispatch)")
        marks = request.node.iter_markers("fdpass_needs")
        wanted = [CONSTRUCTED, *(str(a) for m in marks for a in m.args)]
        options = run_options(request.config)
        for name in wanted:
            short = facts.shortfalls.get(name)
            if short is None or short.owner in ids:
                continue
            if not options.selects(short.owner):
                continue  # its owner is not in this run: the check shows the cause itself
            blocked(short.owner, short.why)

    @pytest.fixture
    def server(
        self, impl: Callable[[], object], fdpass_proxy_server: ProxyServerFactory
    ) -> StartServer:
        def start(**options: Any) -> ProxyServer:
            return fdpass_proxy_server(impl, **options)

        return start
