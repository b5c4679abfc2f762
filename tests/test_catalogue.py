"""The catalogue (fdpass_conformance/catalogue.py) and docs/spec.md say the same thing.

Runs from a fresh clone: the shared contract is pinned here by its IDs and
levels, not read from outside the repository.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from fdpass_conformance.catalogue import (
    BY_ID,
    CLASSES,
    FD_PASSING_ONLY,
    ID_PATTERN,
    REQUIREMENTS,
    Requirement,
    applicable,
    applicable_classes,
    select,
)

SPEC = Path(__file__).resolve().parents[1] / "docs" / "spec.md"

#: Requirement headings: "#### FP-07 (MUST): title" or "#### SP-18 (MUST, added): title".
HEADING = re.compile(r"^#### (\S+) \((MUST|SHOULD)(, added)?\): (.+?)\s*$", re.MULTILINE)
#: Anything in the text that looks like a requirement ID.
ID_TOKEN = re.compile(r"\b(?:SP|FP|IPC|FLT)-\d+\b")

#: The shared contract: highest number per class, and its SHOULD requirements.
CONTRACT_SIZE = {"SP": 17, "FP": 14, "IPC": 9, "FLT": 5}
CONTRACT_SHOULD = {"SP-13", "SP-17", "FP-12", "IPC-08"}


def spec_text() -> str:
    return SPEC.read_text(encoding="utf-8")


def spec_headings() -> list[tuple[str, str, bool, str]]:
    """(id, level, added, title) of every requirement heading, backticks dropped."""
    return [
        (m.group(1), m.group(2), m.group(3) is not None, m.group(4).replace("`", ""))
        for m in HEADING.finditer(spec_text())
    ]


def test_ids_are_well_formed_unique_and_in_order() -> None:
    ids = [r.id for r in REQUIREMENTS]
    assert len(ids) == len(set(ids))
    assert set(BY_ID) == set(ids)
    for req in REQUIREMENTS:
        match = ID_PATTERN.match(req.id)
        assert match is not None, req.id
        assert match.group(1) == req.cls
        assert req.level in ("MUST", "SHOULD")
        assert req.title and "\n" not in req.title and req.title == req.title.strip()
        assert BY_ID[req.id] is req
    order = [(CLASSES.index(r.cls), r.number) for r in REQUIREMENTS]
    assert order == sorted(order)
    for cls in CLASSES:
        numbers = [r.number for r in REQUIREMENTS if r.cls == cls]
        assert numbers == list(range(1, len(numbers) + 1)), cls


def test_contract_ids_and_levels_are_kept() -> None:
    contract = {r.id for r in REQUIREMENTS if not r.added}
    expected = {f"{cls}-{n:02d}" for cls, top in CONTRACT_SIZE.items() for n in range(1, top + 1)}
    assert contract == expected
    assert {r.id for r in REQUIREMENTS if not r.added and r.level == "SHOULD"} == CONTRACT_SHOULD
    for req in REQUIREMENTS:
        if req.added:
            assert req.number > CONTRACT_SIZE[req.cls], f"{req.id} reuses a contract number"


def test_spec_headings_match_catalogue() -> None:
    headings = spec_headings()
    ids = [h[0] for h in headings]
    assert len(ids) == len(set(ids)), "a requirement heading appears twice in docs/spec.md"
    in_spec = {h[0]: h[1:] for h in headings}
    in_catalogue = {r.id: (r.level, r.added, r.title) for r in REQUIREMENTS}
    assert sorted(set(in_spec) - set(in_catalogue)) == [], "in docs/spec.md only"
    assert sorted(set(in_catalogue) - set(in_spec)) == [], "in catalogue.py only"
    for req_id, entry in in_catalogue.items():
        assert in_spec[req_id] == entry, req_id
    assert ids == [r.id for r in REQUIREMENTS], "spec headings are not in catalogue order"


def test_spec_mentions_only_known_ids() -> None:
    unknown = sorted(set(ID_TOKEN.findall(spec_text())) - set(BY_ID))
    assert unknown == []


def test_spec_additions_table_lists_every_addition() -> None:
    text = spec_text()
    section = text.split("## Additions to the contract", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| ((?:SP|FP|IPC|FLT)-\d+) \| (MUST|SHOULD) \| ([^|]+?) \|", section, re.M)
    assert {(i, lvl, t.replace("`", "")) for i, lvl, t in rows} == {
        (r.id, r.level, r.title) for r in REQUIREMENTS if r.added
    }


def test_select_by_prefix() -> None:
    fp = select(["FP"])
    assert fp and all(r.cls == "FP" for r in fp)
    assert [r.id for r in fp] == [r.id for r in REQUIREMENTS if r.cls == "FP"]
    assert [r.id for r in select(["IPC-0"])] == [f"IPC-0{n}" for n in range(1, 10)]
    assert [r.id for r in select(["SP-01"])] == ["SP-01"]
    # "F" covers FP and FLT, kept in catalogue order, without duplicates.
    both = select(["F", "FLT"])
    assert [r.id for r in both] == [r.id for r in REQUIREMENTS if r.cls in ("FP", "FLT")]
    # Case, blanks and comma-separated lists as on a command line.
    assert select([" fp , ipc-1"]) == [*fp, BY_ID["IPC-10"]]
    # A bare string is one prefix, not a sequence of one-letter prefixes.
    assert select("SP") == select(["SP"])
    assert select([]) == list(REQUIREMENTS)
    with pytest.raises(ValueError, match="XYZ"):
        select(["FP", "xyz"])


def test_applicable_classes() -> None:
    assert applicable_classes(True, True) == {"SP", "FP", "IPC", "FLT"}
    assert applicable_classes(True, None) == {"SP", "FP", "IPC", "FLT"}
    assert applicable_classes(True, False) == {"SP", "FP", "FLT"}
    assert applicable_classes(False, False) == {"SP", "FLT"}
    assert applicable_classes(False, True) == {"SP", "IPC", "FLT"}


def test_applicable_single_requirements() -> None:
    assert FD_PASSING_ONLY.issubset(BY_ID)

    def ids(fd_passing: bool, creates_ipc: bool | None) -> set[str]:
        return {r.id for r in REQUIREMENTS if applicable(r, fd_passing, creates_ipc)}

    assert ids(True, True) == set(BY_ID)
    shared = ids(False, False)
    assert not any(i.startswith(("FP-", "IPC-")) for i in shared)
    assert shared.isdisjoint(FD_PASSING_ONLY)
    assert {"SP-01", "FLT-03", "FLT-05"} <= shared


def test_requirement_is_frozen() -> None:
    req: Requirement = BY_ID["SP-01"]
    with pytest.raises(AttributeError):
        req.level = "SHOULD"  # type: ignore[misc]
    assert req.must and not BY_ID["SP-13"].must
