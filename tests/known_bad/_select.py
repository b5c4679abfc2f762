"""Corpus-session plugin: run a known-bad proxy only against the requirement classes it touches.

Loaded with ``-p known_bad._select``. ``FDPASS_CORPUS_CLASSES`` holds a JSON
object, ``--fdpass-impl`` spec -> class prefixes (``["FP", "FLT"]``); the
tests of a listed implementation whose requirements are all of other classes
are deselected before the conformance plugin sees them (their requirements
are reported ``not-run``). Implementations not listed run every suite.

Why: a known-bad proxy is the reference with one step broken, and the
corpus session ran every suite against some sixty of them; most of its time
went to classes the defect cannot reach. ``tests/test_known_bad.py`` says
which entries keep the full pass (every seed finding, and the references),
so spurious failures in far classes are still looked for there.
"""

from __future__ import annotations

import json
import os

import pytest

from fdpass_conformance.suites.base import requirement_ids

ENV = "FDPASS_CORPUS_CLASSES"


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    plan: dict[str, list[str]] = json.loads(os.environ.get(ENV) or "{}")
    if not plan:
        return
    keep: list[pytest.Item] = []
    dropped: list[pytest.Item] = []
    for item in items:
        callspec = getattr(item, "callspec", None)
        impl = callspec.params.get("fdpass_impl") if callspec is not None else None
        classes = plan.get(str(getattr(impl, "spec", "")))
        ids = requirement_ids(item)
        if classes is None or not ids or any(i.split("-")[0] in classes for i in ids):
            keep.append(item)
        else:
            dropped.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep
