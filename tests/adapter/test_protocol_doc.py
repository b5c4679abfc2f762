"""docs/adapter.md is the protocol a stranger implements: it must name what the adapter
really sends and accepts, and show the wrapper example as it is in examples/."""

from __future__ import annotations

import re
from pathlib import Path

from fdpass_conformance.adapter import PROTOCOL, PROTOCOLS
from fdpass_conformance.adapter.wire import ERROR_KINDS, INTERNAL, UNSUPPORTED

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "adapter.md").read_text(encoding="utf-8")
#: Every op the adapter sends (adapter/proxy.py).
OPS = (
    "is_supported",
    "create_socket",
    "open_channels",
    "fork_worker",
    "dispatch",
    "enter_worker",
    "accept",
    "release",
    "close",
)


def _table_first_column(heading: str) -> set[str]:
    section = DOC.split(heading, 1)[1].split("\n#", 1)[0]
    return set(re.findall(r"^\| `([a-z_A-Z]+)`", section, re.MULTILINE))


def test_every_op_is_documented() -> None:
    assert _table_first_column("### Operations") == set(OPS)
    sent = (ROOT / "fdpass_conformance" / "adapter" / "proxy.py").read_text(encoding="utf-8")
    sent += (ROOT / "fdpass_conformance" / "adapter" / "program.py").read_text(encoding="utf-8")
    for op in OPS:
        assert f'"{op}"' in sent, f"{op} is documented but never sent"


def test_every_error_kind_is_documented() -> None:
    section = DOC.split("### Error kinds", 1)[1].split("\n#", 1)[0]
    for kind in (*ERROR_KINDS, INTERNAL, UNSUPPORTED):
        assert f"`{kind}`" in section, kind


def test_the_documented_version_is_the_adapters() -> None:
    assert f"## Protocol {PROTOCOL}\n" in DOC
    assert f"this document is version {PROTOCOL}" in DOC
    assert f"accepts versions {' and '.join(map(str, PROTOCOLS))}" in DOC


def test_the_wrapper_example_is_shown_as_it_is() -> None:
    wrapper = (ROOT / "examples" / "php" / "acme-proxy" / "fdpass-wrapper.php").read_text(
        encoding="utf-8"
    )
    assert f"```php\n{wrapper}```" in DOC, "docs/adapter.md shows an outdated wrapper"
