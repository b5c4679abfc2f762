"""The report as one self-contained HTML page: what people look at after a run.

No network: styles and the small filter script are inline. The page is a
summary strip (one card per implementation: its gate and counts), then one
matrix of requirements x implementations. A cell that needs attention (fail,
error, warn, known, blocked) is a link that opens its evidence in a full-width
row below: the message and traceback lines, the fault layer, what blocked it,
every test of the requirement, why the requirement exists (its seed finding,
from docs/spec.md) and a link to its section. ``#ev-N-ID`` in the URL opens
that evidence on load (``#open=ev-N-ID`` too, without scrolling to it);
without scripts, the same link still shows it (``:target``).
"""

from __future__ import annotations

import html

from ..catalogue import CLASS_TITLES, CLASSES, REQUIREMENTS
from .model import ATTENTION, VERDICTS, ImplResults, Report, RequirementResult
from .spec import sections

TITLE = "fd-passing proxy conformance report"

_STYLE = """
:root{--fail:#d93636;--fail-bg:#fbe3e3;--error:#8a3fc7;--error-bg:#efe2fa;
--warn:#b07800;--warn-bg:#fdf1cf;--known:#8a6d3b;--known-bg:#f1ead9;--blocked:#3d6fb6;
--blocked-bg:#e1eaf7;--pass:#24803a;--pass-bg:#e0f3e4;--muted:#6b7280;--muted-bg:#f1f2f4;
--line:#d9dce1}
*{box-sizing:border-box}
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1f2328;
background:#fff}
header.top{padding:16px 24px 8px;display:flex;gap:16px;align-items:baseline;flex-wrap:wrap}
header.top h1{font-size:20px;margin:0}
.gate{font-weight:700;padding:2px 10px;border-radius:4px;color:#fff}
.gate.PASS{background:var(--pass)}.gate.FAIL{background:var(--fail)}
.meta{color:var(--muted);margin:0 24px 12px;font-size:13px}
.summary{display:flex;flex-wrap:wrap;gap:12px;padding:0 24px 12px}
.card{border:1px solid var(--line);border-left:6px solid var(--pass);border-radius:6px;
padding:8px 12px;min-width:220px;flex:1 1 220px;max-width:420px}
.card.FAIL{border-left-color:var(--fail)}
.card h2{font-size:15px;margin:0 0 4px;white-space:nowrap;overflow:hidden;text-overflow:ellipsis}
.card .impl-gate{font-weight:700}
.counts{list-style:none;margin:6px 0 0;padding:0;display:flex;flex-wrap:wrap;gap:4px}
.counts li{padding:1px 7px;border-radius:10px;font-size:12px;white-space:nowrap}
.fixed{font-size:12px;color:var(--known);margin:6px 0 0}
nav.filters{position:sticky;top:0;z-index:3;background:#fff;border-bottom:1px solid var(--line);
padding:8px 24px;display:flex;gap:16px;align-items:center;flex-wrap:wrap}
nav.filters button{font:inherit;border:1px solid var(--line);background:#fff;border-radius:4px;
padding:2px 10px;cursor:pointer}
nav.filters button.on{background:#1f2328;color:#fff;border-color:#1f2328}
.shown{color:var(--muted)}
.wrap{padding:0 24px 24px}
table.matrix{border-collapse:separate;border-spacing:0;width:100%}
table.matrix th,table.matrix td{border-bottom:1px solid var(--line);padding:4px 8px;text-align:left;
vertical-align:top}
table.matrix thead th{position:sticky;top:41px;z-index:2;background:#f6f8fa;
border-bottom:2px solid var(--line);white-space:nowrap}
.id{white-space:nowrap;font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-weight:600}
.level{white-space:nowrap;color:var(--muted)}
.title{min-width:240px}
table.matrix td.cell{white-space:nowrap;text-align:center;width:1%;min-width:110px}
td.cell a{display:block;color:inherit;text-decoration:none;font-weight:700}
td.cell a::after{content:" \\25BE";font-weight:400}
td.cell a:hover{text-decoration:underline}
.v-pass{background:var(--pass-bg);color:var(--pass)}
.v-fail{background:var(--fail-bg);color:var(--fail)}
.v-error{background:var(--error-bg);color:var(--error)}
.v-warn{background:var(--warn-bg);color:var(--warn)}
.v-known{background:var(--known-bg);color:var(--known)}
.v-blocked{background:var(--blocked-bg);color:var(--blocked)}
.v-skip,.v-n-a,.v-not-run{background:var(--muted-bg);color:var(--muted)}
tr.evidence>td{background:#fafbfc;border-left:4px solid var(--line);padding:10px 16px}
tr.evidence[data-verdict=fail]>td{border-left-color:var(--fail)}
tr.evidence[data-verdict=error]>td{border-left-color:var(--error)}
tr.evidence[data-verdict=warn]>td{border-left-color:var(--warn)}
tr.evidence[data-verdict=known]>td{border-left-color:var(--known)}
tr.evidence[data-verdict=blocked]>td{border-left-color:var(--blocked)}
tr.evidence:target{display:table-row}
.ev-head{margin-bottom:6px}
.ev dl{display:grid;grid-template-columns:max-content 1fr;gap:4px 14px;margin:0}
.ev dt{color:var(--muted);white-space:nowrap}
.ev dd{margin:0;min-width:0}
.ev pre{margin:0;padding:8px;background:#fff;border:1px solid var(--line);border-radius:4px;
white-space:pre-wrap;word-break:break-word;font-size:12.5px;max-height:360px;overflow:auto}
.ev code{font-size:12.5px;word-break:break-all}
.ev ul{margin:0;padding-left:18px}
.tag{padding:0 6px;border-radius:3px;font-size:12px;font-weight:600}
"""

_SCRIPT = """
(function(){
  var rows=[].slice.call(document.querySelectorAll('tr.req'));
  var only=document.getElementById('failing-only');
  var shown=document.getElementById('shown');
  var cls='';
  function evidenceOf(row){
    return [].slice.call(document.querySelectorAll('tr.evidence[data-for="'+row.id+'"]'));
  }
  function apply(){
    var n=0;
    rows.forEach(function(r){
      var show=(!only.checked||r.dataset.attention==='1')&&(!cls||r.dataset.cls===cls);
      r.hidden=!show; if(show){n++;}
      evidenceOf(r).forEach(function(e){e.hidden=!show||!e.classList.contains('open');});
    });
    shown.textContent=n+' of '+rows.length+' requirements shown';
  }
  function open(id,toggle){
    var e=document.getElementById(id);
    if(!e||!e.classList.contains('evidence')){return;}
    if(toggle){e.classList.toggle('open');}else{e.classList.add('open');}
    e.hidden=!e.classList.contains('open');
  }
  document.querySelectorAll('td.cell a').forEach(function(a){
    a.addEventListener('click',function(ev){
      ev.preventDefault();
      var id=a.getAttribute('href').slice(1);
      open(id,true);
      history.replaceState(null,'','#'+id);
    });
  });
  document.querySelectorAll('nav.filters button').forEach(function(b){
    b.addEventListener('click',function(){
      cls=b.dataset.cls;
      document.querySelectorAll('nav.filters button').forEach(function(o){
        o.classList.toggle('on',o===b);
      });
      apply();
    });
  });
  only.addEventListener('change',apply);
  // #ev-N-ID (a cell's link) or #open=ev-N-ID (opens it without jumping to it, for
  // links and screenshots that should show the page from its top).
  function fromHash(){
    var id=decodeURIComponent(location.hash.slice(1)).replace(/^open=/,'');
    if(id){open(id,false);}
  }
  window.addEventListener('hashchange',fromHash);
  fromHash();
  apply();
})();
"""

esc = html.escape


def _gate(passed: bool) -> str:
    return "PASS" if passed else "FAIL"


def _counts(impl: ImplResults) -> str:
    counts = impl.counts()
    items = "".join(f"<li class='v-{v}'>{counts[v]} {v}</li>" for v in VERDICTS if counts[v])
    return f"<ul class='counts'>{items}</ul>"


def _card(report: Report, impl: ImplResults) -> str:
    gate = _gate(report.impl_passed(impl))
    fixed = impl.fixed()
    fixed_line = (
        f"<p class='fixed'>fixed, drop from the baseline: {esc(', '.join(fixed))}</p>"
        if fixed
        else ""
    )
    return (
        f"<div class='card {gate}'><h2 title='{esc(impl.impl)}'>{esc(impl.impl)}</h2>"
        f"<span class='impl-gate'>{gate}</span>{_counts(impl)}{fixed_line}</div>"
    )


def _ev_id(index: int, rid: str) -> str:
    return f"ev-{index}-{rid}"


def _cell(index: int, res: RequirementResult) -> str:
    verdict = res.verdict
    if verdict in ATTENTION:
        return (
            f"<td class='cell v-{verdict}'>"
            f"<a href='#{_ev_id(index, res.requirement.id)}'>{verdict}</a></td>"
        )
    deciding = res.deciding
    if verdict == "pass":
        tip = f"{sum(t.outcome == 'pass' for t in res.tests)} test(s) passed"
    else:
        tip = deciding.reason if deciding is not None else "no test of it ran"
    return f"<td class='cell v-{verdict}' title='{esc(tip)}'>{verdict}</td>"


def _evidence(report: Report, index: int, impl: ImplResults, res: RequirementResult) -> str:
    req = res.requirement
    section = sections().get(req.id)
    deciding = res.deciding
    link = f" · <a href='{esc(section.url)}'>{req.id} in the contract</a>" if section else ""
    rows = []
    if deciding is not None:
        rows.append(("Test", f"<code>{esc(deciding.nodeid)}</code>"))
        rows.append(("Message", esc(deciding.reason) or "(none)"))
        if deciding.details:
            rows.append(("Traceback", f"<pre>{esc(deciding.details)}</pre>"))
        if deciding.blocked_by:
            target = f"req-{deciding.blocked_by}"
            rows.append(("Blocked by", f"<a href='#{target}'>{esc(deciding.blocked_by)}</a>"))
        rows.append(("Fault layer", esc(deciding.fault_layer) or "none (no fault injected)"))
    if res.known and report.baseline is not None:
        rows.append(("Baseline", f"listed in <code>{esc(report.baseline.source)}</code>"))
    if section and section.why:
        rows.append(("Why it exists", esc(section.why)))
    if len(res.tests) > 1:
        items = "".join(
            f"<li><span class='tag v-{t.outcome}'>{t.outcome}</span> "
            f"<code>{esc(t.nodeid.rsplit('::', 1)[-1])}</code>"
            f"{' · ' + esc(t.reason) if t.reason and t.outcome != 'pass' else ''}</li>"
            for t in res.tests
        )
        rows.append(("All its tests", f"<ul>{items}</ul>"))
    body = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in rows)
    colspan = 3 + len(report.impls)
    return (
        f"<tr class='evidence' data-verdict='{res.verdict}' id='{_ev_id(index, req.id)}' "
        f"data-for='req-{req.id}' hidden><td colspan='{colspan}'><div class='ev'>"
        f"<div class='ev-head'><span class='id'>{req.id}</span> {req.level} · "
        f"<span class='tag v-{res.verdict}'>{res.verdict}</span> on <b>{esc(impl.impl)}</b>"
        f" (result: {res.result}){link}</div><dl>{body}</dl></div></td></tr>"
    )


def _meta(report: Report) -> str:
    levels = "strict: SHOULD failures fail" if report.strict else "MUST fails, SHOULD warns"
    layers = ", ".join(f"{k}: {v}" for k, v in report.fault_layers.items())
    parts = [f"levels: {levels}", f"IPC isolation: {report.isolation}", f"fault layers: {layers}"]
    if report.baseline is not None:
        strict = " (strict)" if report.baseline_strict else ""
        parts.append(f"baseline: {report.baseline.source}{strict}")
    return "<p class='meta'>" + esc(" · ".join(parts)) + "</p>"


def to_html(report: Report) -> str:
    impls = list(report.impls.values())
    head = "".join(f"<th scope='col'>{esc(i.impl)}</th>" for i in impls)
    body: list[str] = []
    for req in REQUIREMENTS:
        results = [impl.requirements[req.id] for impl in impls]
        attention = any(r.verdict in ATTENTION for r in results)
        cells = "".join(_cell(n, r) for n, r in enumerate(results))
        body.append(
            f"<tr class='req' id='req-{req.id}' data-cls='{req.cls}' "
            f"data-attention='{int(attention)}'><th scope='row' class='id'>{req.id}</th>"
            f"<td class='level'>{req.level}</td><td class='title'>{esc(req.title)}</td>"
            f"{cells}</tr>"
        )
        body += [
            _evidence(report, n, impl, r)
            for n, (impl, r) in enumerate(zip(impls, results, strict=True))
            if r.verdict in ATTENTION
        ]
    buttons = "<button class='on' data-cls=''>all</button>" + "".join(
        f"<button data-cls='{c}' title='{esc(CLASS_TITLES[c])}'>{c}</button>" for c in CLASSES
    )
    gate = _gate(report.passed())
    return "\n".join(
        [
            "<!DOCTYPE html>",
            "<html lang='en'><head><meta charset='utf-8'>",
            "<meta name='viewport' content='width=device-width,initial-scale=1'>",
            f"<title>{TITLE}: {gate}</title><style>{_STYLE}</style></head><body>",
            f"<header class='top'><h1>{TITLE}</h1><span class='gate {gate}' id='gate'>"
            f"{gate}</span></header>",
            _meta(report),
            "<section class='summary' id='summary'>"
            + "".join(_card(report, i) for i in impls)
            + "</section>",
            "<nav class='filters' id='filters'><label><input type='checkbox' id='failing-only'>"
            f" failing only</label><span>{buttons}</span>"
            "<span class='shown' id='shown'></span></nav>",
            "<div class='wrap'><table class='matrix' id='matrix'><thead><tr>"
            f"<th scope='col'>ID</th><th scope='col'>Level</th><th scope='col'>Requirement</th>"
            f"{head}</tr></thead><tbody>",
            *body,
            "</tbody></table></div>",
            f"<script>{_SCRIPT}</script></body></html>",
        ]
    )
