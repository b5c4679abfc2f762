"""macOS as the conformance run sees it: fault layers, isolation, and the fallbacks they trigger.

This Linux machine cannot run macOS; each test patches the platform checks
(``sys.platform``, the availability probes) and says so. What runs after the
patch is the real code: the report header, the JSON report, a real forked
server whose fault falls back to the Python layer.
"""

from __future__ import annotations

import errno
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import jsonschema  # type: ignore[import-untyped, unused-ignore]
import pytest

from fdpass_conformance import conformance, faults
from fdpass_conformance.faults import kernel, pylevel, syscall
from fdpass_conformance.fixtures.server import ProxyServerFactory
from fdpass_conformance.harness import namespace
from fdpass_conformance.harness.server import HarnessError
from fdpass_conformance.report.model import Report
from fdpass_conformance.suites import faultctl
from reference import MasterProxy

DOCS = Path(__file__).resolve().parents[2] / "docs"

DARWIN_SYSCALL = "macOS has no strace (use the python layer)"
DARWIN_KERNEL = "set_nofile_limit works on the calling process only (darwin: no prlimit)"


@pytest.fixture
def darwin(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """MOCK: sys.platform reads "darwin"; the cached strace probe is reset around the test."""
    syscall.available.cache_clear()
    monkeypatch.setattr(sys, "platform", "darwin")
    yield
    monkeypatch.undo()
    syscall.available.cache_clear()


@pytest.mark.usefixtures("darwin")
def test_each_layer_reports_its_darwin_status() -> None:
    """MOCK of macOS: the layer table of the report header, as a Mac prints it."""
    assert kernel.available() == (True, DARWIN_KERNEL)
    assert syscall.available() == (False, DARWIN_SYSCALL)
    assert pylevel.available() == (True, "")
    assert faults.layer_report() == {
        "kernel": f"available ({DARWIN_KERNEL})",
        "syscall": f"unavailable: {DARWIN_SYSCALL}",
        "python": "available",
    }
    assert conformance._fault_layers() == faults.layer_report()


def test_darwin_isolation_is_the_global_lock_with_the_reason(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """MOCK of macOS: namespace detection as it runs there, and the header line built from it."""
    monkeypatch.setattr(sys, "platform", "darwin")
    detection = namespace._detect()
    assert (detection.namespaces, detection.reason) == (False, "macOS has no IPC namespaces")
    monkeypatch.setattr("fdpass_conformance.harness.isolation.IPC_NAMESPACES", False)
    monkeypatch.setattr(
        "fdpass_conformance.harness.isolation.IPC_NAMESPACE_REASON", detection.reason
    )
    from fdpass_conformance.harness.isolation import isolation_mode

    assert isolation_mode() == "global-ipcs+lock (macOS has no IPC namespaces)"


@pytest.mark.usefixtures("darwin")
def test_a_darwin_report_validates_against_the_schema() -> None:
    """MOCK of macOS: the header fields of a report written on a Mac fit docs/report.schema.json."""
    report = Report(False, "global-ipcs+lock (macOS has no IPC namespaces)", faults.layer_report())
    schema = json.loads((DOCS / "report.schema.json").read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator(schema).validate(report.to_dict())


@pytest.mark.usefixtures("darwin")
def test_the_docs_quote_the_darwin_reasons_verbatim() -> None:
    """MOCK of macOS: what docs/faults.md and troubleshooting.md tell Mac users is what they see."""
    faults_doc = (DOCS / "faults.md").read_text(encoding="utf-8")
    trouble_doc = (DOCS / "troubleshooting.md").read_text(encoding="utf-8")
    assert f"`{DARWIN_SYSCALL}`" in faults_doc
    assert f"available ({DARWIN_KERNEL})" in faults_doc
    assert "global-ipcs+lock (macOS has no IPC namespaces)" in trouble_doc


def test_documented_linux_reasons_match_the_code() -> None:
    """The strace reasons in docs/faults.md are the strings the probe produces (no mock)."""
    source = Path(syscall.__file__).read_text(encoding="utf-8")
    doc = (DOCS / "faults.md").read_text(encoding="utf-8")
    for reason in ("strace not found on PATH", "forbids ptrace attach", "strace cannot trace here"):
        assert reason in source and reason in doc, reason
    assert re.search(r"may attach only to its own descendants", source)


@pytest.mark.timeout(120)
def test_suites_fall_back_to_the_python_layer(
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
    fdpass_proxy_server: ProxyServerFactory,
) -> None:
    """MOCK of macOS: strace is reported unavailable with the darwin reason, and the server
    runs without an IPC namespace (as it must there); the fault is then injected for real
    by the Python layer inside the forked master, or the test is skipped with the reason.
    """
    with monkeypatch.context() as mp:
        mp.setattr(sys, "platform", "darwin")
        why = syscall.available.__wrapped__()
    assert why == (False, DARWIN_SYSCALL)
    monkeypatch.setattr(syscall, "available", lambda: why)

    srv = fdpass_proxy_server(MasterProxy, workers=2, namespace=False)
    assert srv.isolation == "global-ipcs+lock"
    srv.set_auto(False)
    with srv.connect() as client:
        client.sendall(b"darwin")
        with faultctl.counted_fault(srv, request, "sendmsg", "ENOBUFS", times=None) as fault:
            assert fault.layer == "python"
            with pytest.raises(OSError) as info:
                srv.dispatch(timeout=2.0)
    assert info.value.errno in (errno.ENOBUFS, errno.EPIPE), info.value
    assert ("fdpass_fault_layer", "python:socket.socket.sendmsg:ENOBUFS") in (
        request.node.user_properties
    )
    skipped = f"cannot inject setsockopt failures here: {re.escape(DARWIN_SYSCALL)}"
    with (
        pytest.raises(pytest.skip.Exception, match=skipped),
        faultctl.counted_fault(srv, request, "setsockopt", "ENOMEM"),
    ):
        pass  # pragma: no cover - the context manager skips before the body
    with pytest.raises(HarnessError, match="need the server's own IPC namespace"):
        srv.set_ipc_limit("msgmni", 0)  # so IPC-06/IPC-08 skip on macOS
