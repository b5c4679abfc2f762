"""The reports people read: HTML in a real browser, Markdown for a job summary.

The HTML is rendered by headless Chromium (``apt-get install -y chromium``),
which runs the page's script; ``--dump-dom`` then shows what a reader gets.
A probe script appended to a copy of the page writes layout facts measured
by the browser (horizontal overflow at 1280 px, wrapped IDs) into the DOM.
The report is built in-process from outcomes of three implementations, so
that every verdict with evidence is on the page.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from fdpass_conformance.catalogue import REQUIREMENTS
from fdpass_conformance.report import model
from fdpass_conformance.report.baseline import EVERY, Baseline
from fdpass_conformance.report.html import to_html
from fdpass_conformance.report.markdown import to_markdown
from fdpass_conformance.report.model import Report
from fdpass_conformance.report.spec import sections

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
BROWSER = next((b for b in BROWSERS if shutil.which(b)), None)
needs_browser = pytest.mark.skipif(
    BROWSER is None, reason="no chromium on PATH (apt-get install -y chromium)"
)
#: Seconds a headless render may take.
RENDER_TIMEOUT = 60

TRACEBACK = "AssertionError: the worker received an inheritable socket\n  test_fp.py:97 in test_x"

PROBE = """<script>
(function(){
  var d=document.body.dataset;
  d.overflow=String(document.documentElement.scrollWidth>window.innerWidth);
  d.wrappedIds=[].slice.call(document.querySelectorAll('#matrix .id'))
    .filter(function(e){
      var line=parseFloat(getComputedStyle(e).lineHeight)||20;
      return e.offsetParent!==null&&e.getBoundingClientRect().height>2*line+10;
    })
    .map(function(e){return e.textContent;}).join(',');
})();
</script></body>"""


def outcome(rid: str, impl: str, result: str, reason: str = "", **kw: str) -> model.TestOutcome:
    return model.TestOutcome(
        f"suites/test.py::TestContract::test_{rid}[{impl}]", result, reason, **kw
    )


def three_impls() -> Report:
    report = Report(False, "ipc-namespace", {"kernel": "available", "syscall": "available"})
    report.baseline = Baseline("conformance-baseline.txt", {"Legacy": frozenset({"SP-07"})})
    for impl in ("MasterProxy", "AcmeProxy", "Legacy"):
        for req in REQUIREMENTS[:20]:
            report.record(impl, [req.id], outcome(req.id, impl, "pass"))
    report.record(
        "AcmeProxy",
        ["FP-05"],
        outcome("FP-05", "AcmeProxy", "fail", TRACEBACK.splitlines()[0], details=TRACEBACK),
    )
    report.record(
        "AcmeProxy", ["FP-12"], outcome("FP-12", "AcmeProxy", "fail", "worker 2 always busy")
    )
    report.record(
        "Legacy",
        ["FP-02"],
        outcome("FP-02", "Legacy", "fail", "no connection reached a worker", details="x"),
    )
    report.record(
        "Legacy",
        ["FP-09"],
        outcome(
            "FP-09", "Legacy", "blocked", "blocked by FP-02: nothing served", blocked_by="FP-02"
        ),
    )
    report.record("Legacy", ["SP-07"], outcome("SP-07", "Legacy", "fail", "port None accepted"))
    report.record(
        "Legacy",
        ["FLT-02"],
        outcome(
            "FLT-02", "Legacy", "error", "AttributeError: x", fault_layer="syscall:accept:EMFILE"
        ),
    )
    return report


def render(browser_args: list[str], page: Path) -> str:
    assert BROWSER is not None
    proc = subprocess.run(
        [BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1280,900",
         *browser_args],
        capture_output=True, text=True, timeout=RENDER_TIMEOUT, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, f"{BROWSER} failed on {page}: {proc.stderr[-2000:]}"
    return proc.stdout


@needs_browser
def test_the_html_report_renders_matrix_summary_and_opened_evidence(tmp_path: Path) -> None:
    page = tmp_path / "report.html"
    page.write_text(to_html(three_impls()).replace("</body>", PROBE), encoding="utf-8")
    dom = render(["--dump-dom", f"{page.as_uri()}#open=ev-1-FP-05"], page)

    # The summary strip: one card per implementation with its gate and counts.
    cards = re.findall(r"<div class=\"card (PASS|FAIL)\"><h2[^>]*>([^<]+)</h2>", dom)
    assert cards == [("PASS", "MasterProxy"), ("FAIL", "AcmeProxy"), ("FAIL", "Legacy")], cards
    assert '<li class="v-known">1 known</li>' in dom and '<li class="v-warn">1 warn</li>' in dom
    # The matrix: every requirement, one column per implementation, under a sticky header.
    assert len(re.findall(r'<tr class="req" id="req-', dom)) == len(REQUIREMENTS)
    assert re.search(r"<th scope=\"col\">MasterProxy</th><th scope=\"col\">AcmeProxy</th>", dom)
    for verdict, cell in [("fail", "ev-1-FP-05"), ("warn", "ev-1-FP-12"), ("known", "ev-2-SP-07"),
                          ("blocked", "ev-2-FP-09"), ("error", "ev-2-FLT-02")]:  # fmt: skip
        assert f'<td class="cell v-{verdict}"><a href="#{cell}">{verdict}</a></td>' in dom, verdict
    # The opened failure: its evidence row is shown (the script ran), the others are not.
    opened = re.search(r'<tr class="evidence open"[^>]*id="ev-1-FP-05"[^>]*>(.*?)</tr>', dom, re.S)
    assert opened is not None and "hidden" not in opened.group(0).split(">", 1)[0], dom[:3000]
    evidence = opened.group(1)
    assert "AssertionError: the worker received an inheritable socket" in evidence
    assert "test_fp.py:97 in test_x" in evidence  # the traceback lines
    assert "Fault layer" in evidence and "FP-05 in the contract" in evidence
    assert "Why it exists" in evidence and "spec.md#fp-05-must-" in evidence
    assert re.search(r'<tr class="evidence"[^>]*id="ev-2-FP-09"[^>]*hidden', dom)
    assert f"{len(REQUIREMENTS)} of {len(REQUIREMENTS)} requirements shown" in dom
    # Readable at 1280 px: nothing wider than the window, no requirement ID wrapped.
    assert 'data-overflow="false"' in dom and 'data-wrapped-ids=""' in dom, dom[-600:]


@needs_browser
def test_a_blocked_cell_names_its_blocker_and_the_screenshot_renders(tmp_path: Path) -> None:
    page = tmp_path / "report.html"
    page.write_text(to_html(three_impls()), encoding="utf-8")
    dom = render(["--dump-dom", f"{page.as_uri()}#ev-2-FP-09"], page)
    opened = re.search(r'id="ev-2-FP-09"[^>]*>(.*?)</tr>', dom, re.S)
    assert opened is not None
    assert '<dt>Blocked by</dt><dd><a href="#req-FP-02">FP-02</a></dd>' in opened.group(1)
    shot = tmp_path / "shot.png"
    render([f"--screenshot={shot}", page.as_uri()], page)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_html_report_is_self_contained() -> None:
    text = to_html(three_impls())
    assert not re.search(r"(src|href)=['\"]?(https?:)?//", text), "the page must load nothing"
    assert text.count("<tr class='req'") == len(REQUIREMENTS)


def test_the_markdown_summary_has_the_verdict_counts_and_failing_rows_only() -> None:
    text = to_markdown(three_impls())
    lines = text.splitlines()
    assert lines[0] == "## fd-passing proxy conformance: FAIL"
    assert "baseline: `conformance-baseline.txt`" in text
    assert (
        "| Implementation | Gate | fail | error | blocked | pass | not-run | warn | known |" in text
    )
    not_run = len(REQUIREMENTS) - 20
    assert f"| MasterProxy | pass | 0 | 0 | 0 | 20 | {not_run} | 0 | 0 |" in text
    rows = [line for line in lines if re.match(r"\| \w+ \| (SP|FP|IPC|FLT)-\d\d \|", line)]
    assert [row.split(" | ")[1:4] for row in rows] == [
        ["FP-05", "MUST", "**fail**"],
        ["FP-12", "SHOULD", "warn"],
        ["SP-07", "MUST", "known"],
        ["FP-02", "MUST", "**fail**"],
        ["FP-09", "MUST", "blocked"],
        ["FLT-02", "MUST", "**error**"],
    ]
    assert "| Legacy | FP-09 | MUST | blocked | `test_FP-09[Legacy]` | blocked by FP-02:" in text


def test_a_clean_run_says_so_in_the_summary() -> None:
    report = Report(False, "ipc-namespace", {})
    report.record("P", ["SP-01"], outcome("SP-01", "P", "pass"))
    text = to_markdown(report)
    assert text.startswith("## fd-passing proxy conformance: PASS")
    assert "No requirement failed, warned, errored or was blocked." in text


def test_fixed_baseline_entries_are_listed() -> None:
    report = Report(False, "ipc-namespace", {})
    report.baseline = Baseline("b.txt", {EVERY: frozenset({"SP-01"})})
    report.record("P", ["SP-01"], outcome("SP-01", "P", "pass"))
    assert "- P: SP-01 pass now: drop them from the baseline." in to_markdown(report)
    assert "fixed, drop from the baseline: SP-01" in to_html(report)


def test_every_requirement_has_its_spec_section_for_the_evidence() -> None:
    found = sections()
    assert sorted(found) == sorted(r.id for r in REQUIREMENTS)
    assert [rid for rid, s in found.items() if not s.why] == []
    # The id mkdocs (Python-Markdown's toc) gives the heading, checked against a built site.
    assert found["SP-05"].anchor == "sp-05-must-the-listener-has-so_reuseaddr"
    assert found["SP-05"].url.endswith("spec.md#sp-05-must-the-listener-has-so_reuseaddr")
