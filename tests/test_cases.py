"""docs/spec.md lists exactly the cases the suites send (fdpass_conformance/cases.py).

A case named in the spec and sent by no test is a false promise; a case sent
and not named is a check an author cannot read about. Both fail here.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from fdpass_conformance import cases
from fdpass_conformance.catalogue import BY_ID

SPEC = Path(__file__).resolve().parents[1] / "docs" / "spec.md"
SECTION = re.compile(r"^#### (\S+) \(", re.MULTILINE)
#: The bullet, up to the next bullet, heading or blank line.
CASES_BULLET = re.compile(r"^- \*\*Cases\*\*:(.*?)(?=^- \*\*|^#|^\s*$)", re.MULTILINE | re.DOTALL)


def spec_cases() -> dict[str, tuple[str, ...]]:
    """Requirement ID -> the backticked items of its ``- **Cases**:`` bullet, in order."""
    text = SPEC.read_text(encoding="utf-8")
    starts = list(SECTION.finditer(text))
    found: dict[str, tuple[str, ...]] = {}
    for n, match in enumerate(starts):
        end = starts[n + 1].start() if n + 1 < len(starts) else len(text)
        bullets = CASES_BULLET.findall(text[match.start() : end])
        assert len(bullets) <= 1, f"{match.group(1)} has {len(bullets)} Cases bullets"
        if bullets:
            found[match.group(1)] = tuple(re.findall(r"`([^`]*)`", bullets[0]))
    return found


def test_every_table_names_a_requirement() -> None:
    assert set(cases.SPEC_CASES) <= set(BY_ID), sorted(set(cases.SPEC_CASES) - set(BY_ID))


def test_spec_lists_exactly_the_cases_the_tests_send() -> None:
    listed = spec_cases()
    assert set(listed) == set(cases.SPEC_CASES), (
        f"requirements with a Cases bullet in docs/spec.md: {sorted(listed)}; "
        f"with cases in fdpass_conformance/cases.py: {sorted(cases.SPEC_CASES)}"
    )
    for rid, labels in cases.SPEC_CASES.items():
        assert listed[rid] == labels, (
            f"{rid}: docs/spec.md lists {listed[rid]}, the suites send {labels}"
        )


@pytest.mark.parametrize(
    ("message", "call", "named"),
    [
        ("stream_socket_pair() failed: Too many open files", "socketpair", True),
        ("socket_create_pair(): Too many open files in system", "socketpair", True),
        ("socket pair failed", "socketpair", True),
        ("socket_bind(): Permission denied", "bind", True),
        ("msg_get_queue failed", "msgget", True),
        ("socket_set_option failed", "setsockopt", True),
        ("[Errno 13] Permission denied", "bind", False),
        ("open_channels failed", "socketpair", False),
    ],
)
def test_step_names_of_other_languages(message: str, call: str, named: bool) -> None:
    assert cases.names_step(message, call) is named, (message, call)


def test_labels_are_unique() -> None:
    for rid, labels in cases.SPEC_CASES.items():
        assert len(labels) == len(set(labels)), f"{rid}: duplicate case labels {labels}"
