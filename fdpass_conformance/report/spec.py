"""Each requirement's section of the contract (docs/spec.md), for the report's evidence.

A failure in the HTML report opens with why the requirement exists (the seed
finding it comes from) and a link to its section. The text is read from the
spec itself, never copied: ``docs/spec.md`` in a checkout, or the copy the
wheel installs as ``fdpass_conformance/spec.md`` (pyproject force-include).
"""

from __future__ import annotations

import functools
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent.parent
#: Where the spec is: installed with the package, or in the repository checkout.
CANDIDATES = (_PACKAGE / "spec.md", _PACKAGE.parent / "docs" / "spec.md")

_HEADING = re.compile(r"^#### ((?:SP|FP|IPC|FLT)-\d{2}) \((?:MUST|SHOULD)(?:, added)?\): .*$", re.M)
_WHY = re.compile(r"^- \*\*Why\*\*: (.*?)(?=^- \*\*|\Z)", re.M | re.S)


@dataclass(frozen=True)
class Section:
    anchor: str  # the heading's id in the docs site (mkdocs toc)
    why: str  # the "Why" bullet: the reason and the seed finding
    url: str  # the section in the spec file, for a link


def slug(heading: str) -> str:
    """The id Python-Markdown's toc gives a heading (its default slugify)."""
    text = unicodedata.normalize("NFKD", heading.replace("`", "")).encode("ascii", "ignore")
    value = re.sub(r"[^\w\s-]", "", text.decode()).strip().lower()
    return re.sub(r"[-\s]+", "-", value)


def spec_path() -> Path | None:
    return next((p for p in CANDIDATES if p.is_file()), None)


@functools.lru_cache(maxsize=1)
def sections() -> dict[str, Section]:
    """Requirement ID to its section; empty when no spec is installed (a report still renders)."""
    path = spec_path()
    if path is None:
        return {}
    text = path.read_text(encoding="utf-8")
    out: dict[str, Section] = {}
    heads = list(_HEADING.finditer(text))
    for n, head in enumerate(heads):
        end = heads[n + 1].start() if n + 1 < len(heads) else len(text)
        body = text[head.end() : end]
        body = body.split("\n### ", 1)[0].split("\n## ", 1)[0]
        why = _WHY.search(body)
        anchor = slug(head.group(0).removeprefix("#### "))
        out[head.group(1)] = Section(
            anchor,
            " ".join(why.group(1).split()) if why else "",
            f"{path.as_uri()}#{anchor}",
        )
    return out
