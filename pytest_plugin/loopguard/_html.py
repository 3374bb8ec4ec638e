"""The HTML report: one self-contained file (no network, no external assets).

Drawn from the JSON report (``--loopguard-html`` at the end of a session, or ``python -m
loopguard html`` from report files), whose events are read back into the model the terminal's
report is drawn from (:meth:`Verdict.from_json <loopguard._judge.Verdict.from_json>`): the
page reads no event's JSON itself, so it shows what the terminal shows. In sections: the
hotspot table (the terminal's rows, by the same function, severities in colour, each site's
source line and, collapsible, its longest block's report as a failing test prints it: stacks,
native frames, GIL, system call, cause), a histogram of block durations on the severity scale,
the GIL attribution with the threads that starved loops, and a timeline per test of its blocks
against its phases. A report of a run that guarded no test says so at the top. Tables are real
``<table>`` markup with headers; colours keep a contrast of at least 4.5:1 and are never the
only sign (each severity is also written); printing opens every stack. A hotspot's last column
is the fix for its kind of block (``BlockEvent.fix``).
"""

from __future__ import annotations

import html
import sys
from collections import Counter, defaultdict
from typing import Any, Optional

from ._events import Frame
from ._failure import format_event
from ._judge import Verdict
from ._parse import format_duration
from ._report import guarded_count, hotspots, totals_line
from ._reportfile import verdicts

__all__ = ["attach_to_pytest_html", "render"]

_TIMELINES = 100
"""Tests shown on timelines (those with the longest blocks first)."""

_TESTS_LISTED = 20
"""Tests listed under a call site."""

# Upper bounds (ms) of the histogram's bins, on the scale severities use (MONITOR under 100 ms,
# MEDIUM to 1 s, HIGH to 5 s, CRITICAL beyond).
_BINS = (10, 20, 50, 100, 200, 500, 1000, 2000, 5000, float("inf"))

_CSS = """
:root { --critical: #7f1d1d; --high: #b91c1c; --medium: #facc15; --monitor: #a5f3fc;
  --ink: #111827; --muted: #4b5563; --line: #d1d5db; --setup: #dbeafe; --call: #dcfce7;
  --teardown: #fef3c7; }
* { box-sizing: border-box; }
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: var(--ink);
  margin: 1.5rem auto; max-width: 80rem; padding: 0 1rem; background: #fff; }
h1 { font-size: 1.5rem; margin: 0 0 .25rem; }
h2 { font-size: 1.2rem; margin: 2rem 0 .5rem; border-bottom: 2px solid var(--line); }
p.totals { font-weight: 600; margin: .25rem 0 1rem; }
table { border-collapse: collapse; width: 100%; margin: .5rem 0; }
caption { text-align: left; color: var(--muted); padding: .25rem 0; caption-side: top; }
th, td { border: 1px solid var(--line); padding: .3rem .5rem; text-align: left;
  vertical-align: top; }
th { background: #f3f4f6; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
code, pre { font: 13px/1.4 ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace; }
pre { margin: .25rem 0; white-space: pre-wrap; word-break: break-all; }
.sev { display: inline-block; padding: 0 .4rem; border-radius: .25rem; font-weight: 700;
  font-size: .8rem; letter-spacing: .02em; }
.sev-CRITICAL { background: var(--critical); color: #fff; }
.sev-HIGH { background: var(--high); color: #fff; }
.sev-MEDIUM { background: var(--medium); color: #111; }
.sev-MONITOR { background: var(--monitor); color: #111; }
.source { display: block; color: var(--muted); }
p.empty { background: #fef2f2; border: 2px solid var(--high); padding: .5rem .75rem; }
details summary { cursor: pointer; color: #1d4ed8; }
dl.meta { display: grid; grid-template-columns: max-content 1fr; gap: .1rem 1rem;
  margin: 0; color: var(--muted); }
dl.meta dt { font-weight: 600; }
dl.meta dd { margin: 0; }
.bar { height: 1rem; min-width: 1px; }
.timeline { position: relative; height: 2.2rem; border: 1px solid var(--line);
  background: #fafafa; margin: .25rem 0 .1rem; }
.phase { position: absolute; top: 0; bottom: 0; border-right: 1px solid #9ca3af;
  font-size: .7rem; padding: 0 .2rem; overflow: hidden; white-space: nowrap; color: #374151; }
.phase-setup { background: var(--setup); }
.phase-call { background: var(--call); }
.phase-teardown { background: var(--teardown); }
.block { position: absolute; top: .9rem; height: 1.2rem; min-width: 3px;
  border: 1px solid #111; }
.test-name { font-weight: 600; word-break: break-all; }
.legend span { margin-right: 1rem; }
.legend i { display: inline-block; width: .9rem; height: .9rem; vertical-align: -2px;
  margin-right: .25rem; border: 1px solid #6b7280; }
section { break-inside: auto; }
tr, .timeline { break-inside: avoid; }
@media print {
  body { margin: 0; max-width: none; font-size: 11px; }
  details summary { color: var(--ink); }
  * { -webkit-print-color-adjust: exact; print-color-adjust: exact; }
}
"""

# Printing shows every stack: open the collapsed ones first.
_SCRIPT = """
window.addEventListener("beforeprint", function () {
  document.querySelectorAll("details").forEach(function (d) { d.open = true; });
});
"""


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _ms(value: Optional[float]) -> str:
    return "" if value is None else format_duration(value / 1000.0)


def _sev(severity: str) -> str:
    return f'<span class="sev sev-{_e(severity)}">{_e(severity)}</span>'


def _frame_text(f: Optional[Frame]) -> str:
    """A frame as the terminal names it (a library's file as an import names it)."""
    return "?" if f is None else str(f)


def render(data: dict[str, Any]) -> str:
    """The HTML report of a JSON report's ``data``: its events read back as verdicts, the
    rest (settings, environment, runs, test phases) as they are."""
    vs = verdicts(data)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>loopguard report</title>",
        f"<style>{_CSS}</style>",
        "</head>",
        "<body>",
        "<header>",
        "<h1>loopguard: blocking hotspots</h1>",
        f'<p class="totals">{_e(totals_line(vs)) if vs else "No blocks."}</p>',
        _empty(data),
        _meta(data),
        "</header>",
        "<main>",
        _hotspot_section(vs),
        _histogram_section(vs),
        _gil_section(vs),
        _timeline_section(vs, data),
        "</main>",
        f"<script>{_SCRIPT}</script>",
        "</body>",
        "</html>",
        "",
    ]
    return "\n".join(p for p in parts if p)


def _empty(data: dict[str, Any]) -> str:
    guarded, complete = guarded_count(data.get("runs") or [])
    if guarded or not complete:
        return ""
    return (
        '<p class="empty" role="alert"><strong>No test was guarded:</strong> no test ran with '
        "loopguard enabled (none was selected, or every one was disabled), so nothing was "
        "checked. This is not a clean run.</p>"
    )


def _meta(data: dict[str, Any]) -> str:
    s, env = data["settings"], data["environment"]
    guarded, complete = guarded_count(data.get("runs") or [])
    rows = [
        ("tests guarded", guarded if complete else "not known (an older report)"),
        ("threshold", _ms(s.get("threshold_ms"))),
        ("record threshold", _ms(s.get("record_threshold_ms")) or "off"),
        ("mode", s.get("mode")),
        ("baseline", s.get("baseline") or "none"),
        ("runs", len(data.get("runs") or [])),
        (
            "environment",
            f"Python {env.get('python')} ({env.get('implementation')}), pytest "
            f"{env.get('pytest')}, loopguard {env.get('loopguard')}, sampler "
            f"{env.get('sampler') or '?'}",
        ),
    ]
    inner = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in rows)
    return f'<dl class="meta">{inner}</dl>'


def _hotspot_section(vs: list[Verdict]) -> str:
    spots = hotspots(vs)
    out = ['<section id="hotspots" aria-labelledby="h-hotspots">']
    out.append('<h2 id="h-hotspots">Hotspots</h2>')
    if not spots:
        out.append("<p>No call site blocked (allowed blocks are not listed).</p></section>")
        return "\n".join(out)
    out.append("<table>")
    out.append(
        "<caption>One row per call site, worst first (severity, then total time blocked).</caption>"
    )
    out.append(
        '<thead><tr><th scope="col">severity</th><th scope="col" class="num">count</th>'
        '<th scope="col" class="num">tests</th><th scope="col" class="num">max</th>'
        '<th scope="col" class="num">total</th><th scope="col">outcome</th>'
        '<th scope="col">call site</th><th scope="col">blocking operation</th>'
        '<th scope="col">fix</th></tr></thead>'
    )
    out.append("<tbody>")
    for s in spots:
        worst = s.worst
        source = worst.event.site.source if worst is not None and worst.event.site else ""
        out.append(f'<tr class="hotspot row-{_e(s.severity)}">')
        out.append(f"<td>{_sev(s.severity)}</td>")
        out.append(f'<td class="num">{s.count}</td><td class="num">{len(s.tests)}</td>')
        out.append(f'<td class="num">{_e(format_duration(s.max))}</td>')
        out.append(f'<td class="num">{_e(format_duration(s.total))}</td>')
        out.append(f"<td>{_e(s.outcome_text())}</td>")
        cell = f"<code>{_e(s.site)}</code>"
        if source:
            cell += f'<code class="source">&gt; {_e(source)}</code>'
        cell += _block_details(worst, s.where)
        out.append(f"<td>{cell}</td>")
        out.append(f"<td><code>{_e(s.operation)}</code></td>")
        out.append(f"<td>{_e(s.fix or '')}</td>")
        out.append("</tr>")
    out.append("</tbody></table></section>")
    return "\n".join(out)


def _block_details(worst: Optional[Verdict], where: list[tuple[str, str]]) -> str:
    """The longest block's report, as a failing test prints it, and the tests of the site."""
    body = []
    if worst is not None:
        body.append(
            f"<p>Its longest block ({_e(format_duration(worst.event.duration))}), as a "
            "failing test reports it (most recent call last):</p>"
            f"<pre>{_e(chr(10).join(format_event(worst.event)))}</pre>"
        )
        if worst.reason:
            body.append(f"<p>{_e(worst.outcome)}: {_e(worst.reason)}</p>")
    if where:
        tests = "".join(
            f"<li>{_e(t or '(outside any test)')} ({_e(p)})</li>" for t, p in where[:_TESTS_LISTED]
        )
        more = len(where) - _TESTS_LISTED
        if more > 0:
            tests += f"<li>and {more} more (the JSON report has them all)</li>"
        body.append(f"<p>Blocks in:</p><ul>{tests}</ul>")
    if not body:
        return ""
    return f"<details><summary>stack and tests</summary>{''.join(body)}</details>"


def _bin_label(i: int) -> str:
    low = 0 if i == 0 else _BINS[i - 1]
    high = _BINS[i]
    if high == float("inf"):
        return f"over {format_duration(low / 1000.0)}"
    return f"{format_duration(low / 1000.0)} to {format_duration(high / 1000.0)}"


def _band(high_ms: float) -> str:
    """The severity a block of a bin's length gets when it is over its threshold."""
    if high_ms <= 100:
        return "MONITOR"
    if high_ms <= 1000:
        return "MEDIUM"
    if high_ms <= 5000:
        return "HIGH"
    return "CRITICAL"


def _histogram_section(vs: list[Verdict]) -> str:
    if not vs:
        return ""
    counts: Counter[int] = Counter()
    for v in vs:
        ms = v.event.duration * 1000.0
        counts[next(i for i, b in enumerate(_BINS) if ms < b)] += 1
    first = min(counts)
    last = max(counts)
    most = max(counts.values())
    out = ['<section id="histogram" aria-labelledby="h-histogram">']
    out.append('<h2 id="h-histogram">Block durations</h2>')
    out.append("<table>")
    out.append(
        "<caption>How many blocks lasted how long, on the severity scale (MONITOR under "
        "100 ms, MEDIUM to 1 s, HIGH to 5 s, CRITICAL beyond).</caption>"
    )
    out.append(
        '<thead><tr><th scope="col">duration</th><th scope="col">severity band</th>'
        '<th scope="col" class="num">blocks</th><th scope="col">share</th></tr></thead><tbody>'
    )
    for i in range(first, last + 1):
        n = counts.get(i, 0)
        band = _band(_BINS[i])
        width = 100.0 * n / most
        out.append(
            f'<tr><th scope="row">{_e(_bin_label(i))}</th><td>{_sev(band)}</td>'
            f'<td class="num">{n}</td><td><div class="bar sev-{band}" '
            f'style="width:{width:.1f}%"></div></td></tr>'
        )
    out.append("</tbody></table></section>")
    return "\n".join(out)


_GIL_ROWS = (
    ("loop", "held by the loop thread (its own code ran: Python or C that keeps the GIL)"),
    ("released", "released (a system call, or C code that lets go of the GIL)"),
    ("other", "held by another thread (the loop was starved)"),
    ("unknown", "unknown (not sampled)"),
)


def _gil_section(vs: list[Verdict]) -> str:
    if not vs:
        return ""
    by_gil: Counter[str] = Counter()
    time_by_gil: Counter[str] = Counter()
    for v in vs:
        gil = v.event.gil if v.event.gil in dict(_GIL_ROWS) else "unknown"
        by_gil[gil] += 1
        time_by_gil[gil] += v.event.duration
    out = ['<section id="gil" aria-labelledby="h-gil">']
    out.append('<h2 id="h-gil">GIL attribution</h2>')
    out.append("<table><caption>Who held the GIL while the loop was blocked.</caption>")
    out.append(
        '<thead><tr><th scope="col">the GIL was</th><th scope="col" class="num">blocks</th>'
        '<th scope="col" class="num">time</th></tr></thead><tbody>'
    )
    for key, text in _GIL_ROWS:
        if by_gil[key]:
            out.append(
                f'<tr><th scope="row">{_e(text)}</th><td class="num">{by_gil[key]}</td>'
                f'<td class="num">{_e(format_duration(time_by_gil[key]))}</td></tr>'
            )
    out.append("</tbody></table>")
    culprits: dict[tuple[str, str], list[Verdict]] = defaultdict(list)
    for v in vs:
        ev = v.event
        if ev.starved and ev.gil_holder_thread is not None:
            inner = ev.gil_holder_stack[-1] if ev.gil_holder_stack else None
            culprits[(ev.gil_holder_thread, _frame_text(inner))].append(v)
    if culprits:
        out.append("<table><caption>Starvation culprits: the threads that held the GIL while a")
        out.append(" loop waited for it, and where they were.</caption>")
        out.append(
            '<thead><tr><th scope="col">thread</th><th scope="col">where it was</th>'
            '<th scope="col" class="num">blocks</th><th scope="col" class="num">time</th>'
            '<th scope="col">tests</th></tr></thead><tbody>'
        )
        ranked = sorted(culprits.items(), key=lambda kv: -sum(v.event.duration for v in kv[1]))
        for (thread, where), group in ranked:
            tests = sorted({v.test or "(outside any test)" for v in group})
            shown = ", ".join(tests[:3]) + (f" and {len(tests) - 3} more" if len(tests) > 3 else "")
            total = format_duration(sum(v.event.duration for v in group))
            out.append(
                f"<tr><td><code>{_e(thread)}</code></td><td><code>{_e(where)}</code></td>"
                f'<td class="num">{len(group)}</td><td class="num">{_e(total)}</td>'
                f"<td>{_e(shown)}</td></tr>"
            )
        out.append("</tbody></table>")
    else:
        out.append("<p>No loop was starved of the GIL by another thread.</p>")
    out.append("</section>")
    return "\n".join(out)


def _timeline_section(vs: list[Verdict], data: dict[str, Any]) -> str:
    by_test: dict[str, list[Verdict]] = defaultdict(list)
    for v in vs:
        if v.test and v.start_ms is not None:
            by_test[v.test].append(v)
    if not by_test:
        return ""
    phases = {t["test"]: t.get("phases") or {} for t in data["tests"] if isinstance(t, dict)}
    ranked = sorted(by_test, key=lambda t: -max(v.event.duration for v in by_test[t]))
    out = ['<section id="timelines" aria-labelledby="h-timelines">']
    out.append('<h2 id="h-timelines">Timelines</h2>')
    out.append(
        '<p class="legend"><span><i class="phase-setup"></i>setup</span>'
        '<span><i class="phase-call"></i>call</span>'
        '<span><i class="phase-teardown"></i>teardown</span>'
        "<span>blocks in their severity's colour</span></p>"
    )
    if len(ranked) > _TIMELINES:
        out.append(
            f"<p>The {_TIMELINES} tests with the longest blocks of {len(ranked)}; the JSON "
            "report has them all.</p>"
        )
    for test in ranked[:_TIMELINES]:
        out.append(_timeline(test, by_test[test], phases.get(test, {})))
    out.append("</section>")
    return "\n".join(out)


def _timeline(test: str, vs: list[Verdict], phases: dict[str, list[float]]) -> str:
    def start(v: Verdict) -> float:
        return v.start_ms or 0.0

    def length(v: Verdict) -> float:
        return v.event.duration * 1000.0

    spans = [(start(v), start(v) + length(v)) for v in vs]
    known = {p: t for p, t in phases.items() if isinstance(t, list) and len(t) == 2}
    first = min([s for s, _ in spans] + [t[0] for t in known.values()])
    last = max([e for _, e in spans] + [t[1] for t in known.values()])
    width = max(last - first, 1e-3)

    def pct(t: float) -> float:
        return 100.0 * (t - first) / width

    label = [f"{test}: {len(vs)} block{'s' * (len(vs) != 1)} in {_ms(last - first)}"]
    bars = []
    for phase in ("setup", "call", "teardown"):
        if phase in known:
            a, b = known[phase]
            bars.append(
                f'<div class="phase phase-{phase}" style="left:{pct(a):.2f}%;'
                f'width:{max(pct(b) - pct(a), 0.0):.2f}%">{phase}</div>'
            )
            label.append(f"{phase} {_ms(a - first)} to {_ms(b - first)}")
    items = []
    for v in sorted(vs, key=start):
        a = start(v)
        text = (
            f"{format_duration(v.event.duration)} block at {_ms(a - first)} ({v.phase}, "
            f"{v.outcome}) at {_frame_text(v.event.site)}"
        )
        bars.append(
            f'<div class="block sev-{_e(v.severity)}" style="left:{pct(a):.2f}%;'
            f'width:{max(pct(a + length(v)) - pct(a), 0.0):.2f}%" '
            f'title="{_e(text)}"></div>'
        )
        items.append(f"<li>{_sev(v.severity)} {_e(text)}</li>")
    return (
        f'<figure class="test-timeline"><figcaption class="test-name">{_e(test)}</figcaption>'
        f'<div class="timeline" role="img" aria-label="{_e("; ".join(label))}">'
        f"{''.join(bars)}</div><details><summary>{len(vs)} block"
        f"{'s' * (len(vs) != 1)}</summary><ul>{''.join(items)}</ul></details></figure>"
    )


def attach_to_pytest_html(report: Any, text: str) -> None:
    """Add a failing test's loopguard report to its entry in pytest-html's report, by
    pytest-html's convention (``report.extras``), when pytest-html is in use."""
    if "pytest_html" not in sys.modules:
        return
    try:
        from pytest_html import extras
    except ImportError:  # another module of that name
        return
    report.extras = [*getattr(report, "extras", []), extras.text(text, name="loopguard")]
