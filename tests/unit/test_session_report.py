"""The session's report from a list of verdicts: the hotspot table, the baseline file and the
GitHub annotations, with their escaping (in-process, no watchdog)."""

import json
from pathlib import Path

from loopguard import BlockEvent, Frame
from loopguard._judge import Verdict, severity
from loopguard._report import (
    annotations,
    baseline_text,
    closing_lines,
    hotspot_lines,
    hotspots,
    summary_lines,
)

ROOT = Path("/proj")
SCAN = Frame("/proj/app/scanner.py", 18, "scan")
RENDER = Frame("/proj/app/render.py", 7, "render")


def judged(site, duration, outcome="failed", test="tests/test_a.py::test_a", phase="call", **ev):
    event = BlockEvent(
        id=1, duration=duration, threshold=0.1, thread_name="MainThread", thread_ident=1,
        task_name=None, captured_after=0.1, starved=False, loop_kind="asyncio", test=test,
        phase=phase, start_ns=0, end_ns=int(duration * 1e9), site=site, **ev,
    )  # fmt: skip
    key = None if site is None else (site.filename.removeprefix("/proj/"), site.function)
    return Verdict(
        event=event, test=test, phase=phase, threshold=0.1, severity=severity(duration, 0.1),
        outcome=outcome, reason=None, mode="fail", key=key,
        over_threshold=outcome in ("failed", "warned", "baselined"),
    )  # fmt: skip


def test_hotspots_group_by_call_site_worst_severity_first_then_most_time():
    verdicts = [
        judged(SCAN, 0.3),
        judged(SCAN, 0.2, "recorded", test="tests/test_b.py::test_b"),
        judged(RENDER, 1.5, "baselined"),
        judged(Frame("/proj/app/x.py", 1, "x"), 0.9, "allowed"),  # allowed: not a hotspot
        judged(None, 0.4),
    ]
    spots = hotspots(verdicts)
    assert [s.site for s in spots] == [
        str(RENDER),  # HIGH
        str(SCAN),  # MEDIUM, 500 ms in all
        "(ended before its stack was sampled)",  # MEDIUM, 400 ms
    ]
    scan = spots[1]
    assert (scan.count, scan.max, scan.total, scan.severity) == (2, 0.3, 0.5, "MEDIUM")
    assert scan.tests == {"tests/test_a.py::test_a", "tests/test_b.py::test_b"}
    assert scan.outcome_text() == "1 failed, 1 recorded"
    assert spots[0].outcome_text() == "baselined"


def test_the_operation_column_names_the_cause_and_the_innermost_library_frame():
    sleep = Frame("/usr/lib/python3.11/socket.py", 707, "recv_into")
    (spot,) = hotspots([judged(SCAN, 0.3, "recorded", cause="gc", gc_time=0.25, innermost=sleep)])
    assert spot.operation.startswith("(garbage collection) ")
    assert spot.operation.endswith(":707 in recv_into")
    # Over the threshold without the collection, or without the wait for a CPU: the code's
    # block, not labelled with the cause (its failure text gives the share).
    for cause in (dict(gc_time=0.15), dict(cpu_wait=0.15)):
        label = "gc" if "gc_time" in cause else "cpu-wait"
        (spot,) = hotspots([judged(SCAN, 0.3, cause=label, innermost=sleep, **cause)])
        assert spot.operation.endswith(":707 in recv_into") and "(" not in spot.operation
    (spot,) = hotspots([judged(SCAN, 0.3, cause="cpu-wait", cpu_wait=0.25, innermost=sleep)])
    assert spot.operation.startswith("(waiting for a CPU) ")
    (spot,) = hotspots([judged(SCAN, 0.3, cause="import", innermost=sleep)])
    assert spot.operation.startswith("(importing) ")
    (unknown,) = hotspots([judged(Frame("/nowhere/x.py", 1, "x"), 0.3)])
    assert unknown.operation == "?"  # no source line to show


def test_summary_lines_shorten_with_quiet_and_list_tests_with_verbose():
    verdicts = [
        judged(Frame(f"/proj/app/m{i}.py", i + 1, f"f{i}"), 0.1 + i / 100) for i in range(7)
    ]
    normal = [text for text, _ in summary_lines(verdicts, 0)]
    assert normal[0].split() == [
        "severity", "count", "tests", "max", "total", "outcome", "call", "site", "blocking",
        "operation",
    ]  # fmt: skip
    assert len(normal) == 1 + 7 + 1
    assert normal[-1] == ("7 blocks at 7 call sites in 1 test, 910 ms blocked in total: 7 failed")
    quiet = [text for text, _ in summary_lines(verdicts, -1)]
    assert len(quiet) == 1 + 5 + 2
    assert quiet[-2] == "... 2 more call sites (without -q: all)"
    assert [text for text, _ in summary_lines(verdicts, -2)] == [normal[-1]]
    verbose = [text for text, _ in summary_lines(verdicts[:1], 1, test_label=str.upper)]
    assert verbose[2] == "    TESTS/TEST_A.PY::TEST_A (call)"


def test_rows_are_marked_up_by_severity_and_the_totals_by_outcome():
    lines = summary_lines([judged(SCAN, 6.0, "recorded")], 0)
    assert lines[1][1] == {"red": True, "bold": True}  # CRITICAL
    assert lines[-1][1] == {"red": False, "yellow": True, "bold": True}  # nothing failed


def test_the_section_ends_with_the_baselines_fixed_sites_and_the_closing_lines():
    lines = hotspot_lines([], [("app/old.py", "load")], 0)
    assert lines == [
        (
            "1 call site of the baseline did not block in this run (fixed? shrink the file "
            "with --loopguard-baseline-update):",
            {"green": True},
        ),
        ("    app/old.py in load", {"green": True}),
    ]
    late = [judged(SCAN, 0.3, late=True), judged(SCAN, 0.3, late=True)]
    assert closing_lines(late, None, ["JSON report written to r.json"]) == [
        ("loopguard: JSON report written to r.json", {})
    ]
    (warning,) = closing_lines(late, "debug build", [])
    assert warning[0].startswith("loopguard: 2 blocks were captured late")
    assert warning[1] == {"yellow": True}


def test_the_baseline_lists_each_site_over_the_threshold_once_sorted():
    verdicts = [
        judged(SCAN, 0.3),
        judged(SCAN, 0.4, "warned"),
        judged(RENDER, 0.3, "baselined"),
        judged(Frame("/proj/app/a.py", 3, "a"), 0.3, "allowed"),
        judged(None, 0.3),
    ]
    text, n = baseline_text(verdicts)
    assert n == 2
    assert json.loads(text)["sites"] == [
        {"file": "app/render.py", "function": "render"},
        {"file": "app/scanner.py", "function": "scan"},
    ]


def test_annotations_group_by_level_and_line_and_escape_what_github_would_misread():
    odd = Frame("/proj/app/a,b:c.py", 5, "handle")
    verdicts = [judged(odd, 0.3, test=f"tests/test_x.py::test[{i}]") for i in range(4)] + [
        judged(odd, 0.2, "recorded"),
        judged(SCAN, 0.3, "allowed"),
        judged(None, 0.3),
    ]
    lines = annotations(verdicts, root=ROOT, workspace=None)
    assert len(lines) == 2
    error, warning = lines
    assert error.startswith("::error file=app/a%2Cb%3Ac.py,line=5,title=loopguard%3A event loop ")
    assert "(MEDIUM)::" in error
    assert "(4 times; failed) in tests/test_x.py::test[0], tests/test_x.py::test[1], " in error
    assert error.endswith("and 1 more tests")
    assert warning.startswith("::warning file=app/a%2Cb%3Ac.py,line=5,")
    assert warning.endswith("(once; recorded) in tests/test_a.py::test_a")


def test_annotation_messages_escape_percent_and_line_breaks():
    (line,) = annotations([judged(SCAN, 0.3, test="t.py::t[100%\r\nx]")], root=ROOT, workspace=None)
    assert line.endswith("in t.py::t[100%25%0D%0Ax]")
    assert "\r" not in line and "\n" not in line
