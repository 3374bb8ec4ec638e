"""The judge's verdict on one block, step by step, and what a test's circumstances add to it
(in-process, no watchdog)."""

from pathlib import Path

import loopguard._judge as judge_module
from loopguard import BlockEvent, Frame
from loopguard._judge import (
    EXPECTED_REASON,
    NOT_RUN_REASON,
    WARNING_ERROR_REASON,
    Baseline,
    Judge,
)
from loopguard._parse import parse_allow


def event(tmp_path: Path, duration=0.25, *, gc_time=0.0, threshold=0.05, file="app/handlers.py"):
    site = Frame(str(tmp_path / file), 12, "handle")
    return BlockEvent(
        id=1, duration=duration, threshold=threshold, thread_name="MainThread", thread_ident=1,
        task_name=None, captured_after=0.1, starved=False, loop_kind="asyncio", test="t.py::t",
        phase="call", start_ns=0, end_ns=int(duration * 1e9), site=site, stack=[site],
        gc_time=gc_time,
    )  # fmt: skip


def verdict(judge, ev, mode="fail", threshold=0.1, **kwargs):
    return judge.judge(ev, test="t.py::t", phase="call", threshold=threshold, mode=mode, **kwargs)


def test_a_block_under_the_threshold_is_recorded_as_monitor(tmp_path):
    v = verdict(Judge(tmp_path), event(tmp_path, 0.08))
    assert (v.outcome, v.reason, v.severity, v.over_threshold) == (
        "recorded",
        "under the threshold",
        "MONITOR",
        False,
    )


def test_the_verdict_carries_the_judging_threshold_not_the_watchdogs(tmp_path):
    ev = event(tmp_path, 0.25, threshold=0.02)  # the watchdog detected at 20 ms
    v = verdict(Judge(tmp_path), ev, threshold=0.2)
    assert v.threshold == v.event.threshold == 0.2
    assert ev.threshold == 0.02  # the logged event is left as it was: others may judge it too
    assert verdict(Judge(tmp_path), ev, threshold=0.3).outcome == "recorded"


def test_an_excused_block_is_recorded_with_its_cause_on_the_judged_copy(tmp_path):
    ev = event(tmp_path, 0.14, gc_time=0.06)
    v = verdict(Judge(tmp_path), ev)
    assert (v.outcome, v.event.cause, v.over_threshold) == ("recorded", "gc", False)
    assert ev.cause is None
    assert verdict(Judge(tmp_path, gc="include"), ev).outcome == "failed"


def test_the_mode_decides_last(tmp_path):
    ev = event(tmp_path)
    got = {mode: verdict(Judge(tmp_path), ev, mode) for mode in ("fail", "raise", "warn", "record")}
    assert {m: (v.outcome, v.reason) for m, v in got.items()} == {
        "fail": ("failed", None),
        "raise": ("failed", None),
        "warn": ("warned", "mode warn"),
        "record": ("recorded", "mode record"),
    }
    assert all(v.over_threshold for v in got.values())
    assert got["fail"].severity == "MEDIUM"


def test_allow_patterns_beat_the_baseline_and_the_mode(tmp_path):
    session = parse_allow("app/*.py:handle", source="ini")
    marker = parse_allow("app.other", source="marker")
    baseline = Baseline(tmp_path / "b.json", frozenset({("app/handlers.py", "handle")}))
    judge = Judge(tmp_path, allow=(session,), baseline=baseline)
    v = verdict(judge, event(tmp_path), allow=(marker,))
    assert (v.outcome, v.reason, v.over_threshold) == (
        "allowed",
        "allow 'app/*.py:handle' (ini)",
        False,
    )
    other = verdict(judge, event(tmp_path, file="lib/handlers.py"))
    assert other.outcome == "failed"


def test_a_block_outside_the_scanned_packages_is_allowed(tmp_path):
    v = verdict(Judge(tmp_path, scan=("app",)), event(tmp_path))
    assert (v.outcome, v.reason) == ("allowed", "outside loopguard_scan")
    # A frame in a scanned package (here loopguard's own, an importable module) is judged.
    inside = event(tmp_path)
    inside.stack = [Frame(judge_module.__file__, 1, "judge"), *inside.stack]
    assert verdict(Judge(tmp_path, scan=("loopguard",)), inside).outcome == "failed"


def test_the_baseline_matches_file_and_function_relative_to_the_root(tmp_path):
    baseline = Baseline(tmp_path / "b.json", frozenset({("app/handlers.py", "handle")}))
    v = verdict(Judge(tmp_path, baseline=baseline), event(tmp_path), mode="warn")
    assert (v.outcome, v.reason, v.key) == (
        "baselined",
        "in the baseline b.json",
        ("app/handlers.py", "handle"),
    )
    assert v.over_threshold
    moved = verdict(Judge(tmp_path, baseline=baseline), event(tmp_path, file="app/other.py"))
    assert moved.outcome == "failed"
    updating = verdict(Judge(tmp_path, baseline_update=True), event(tmp_path))
    assert (updating.outcome, updating.reason) == ("baselined", "written to the baseline")


def test_a_block_an_expect_block_covered_is_allowed_whatever_else_holds(tmp_path):
    for ev in (event(tmp_path), event(tmp_path, 0.08)):
        v = verdict(Judge(tmp_path), ev, expected=True, warn=lambda ev: False)
        assert (v.outcome, v.reason, v.over_threshold) == ("allowed", EXPECTED_REASON, False)


def test_a_block_no_report_can_carry_is_recorded_instead_of_failing_or_warning(tmp_path):
    why = "began outside any test"
    for mode in ("fail", "warn"):
        v = verdict(Judge(tmp_path), event(tmp_path), mode, orphan=why)
        assert (v.outcome, v.reason, v.over_threshold) == ("recorded", why, False)
    kept = verdict(Judge(tmp_path, baseline_update=True), event(tmp_path), orphan=why)
    assert (kept.outcome, kept.over_threshold) == ("baselined", True)


def test_warn_mode_emits_through_the_callback_and_fails_when_it_became_an_error(tmp_path):
    seen = []

    def emit(ev):
        seen.append(ev)
        return len(seen) == 1  # the second warning is turned into an error

    judge = Judge(tmp_path)
    first = verdict(judge, event(tmp_path), "warn", warn=emit)
    second = verdict(judge, event(tmp_path), "warn", warn=emit)
    assert (first.outcome, second.outcome, second.reason) == (
        "warned",
        "failed",
        WARNING_ERROR_REASON,
    )
    assert seen == [first.event, second.event]
    assert seen[0].threshold == 0.1
    verdict(judge, event(tmp_path), "fail", warn=emit)
    verdict(judge, event(tmp_path, 0.08), "warn", warn=emit)
    assert len(seen) == 2  # only warned blocks are emitted


def test_a_failing_block_of_a_skipped_test_is_recorded(tmp_path):
    failed = verdict(Judge(tmp_path), event(tmp_path))
    final = Judge.not_failing(failed)
    assert (final.outcome, final.reason, final.over_threshold) == (
        "recorded",
        NOT_RUN_REASON,
        False,
    )
    assert final.event is failed.event
    warned = verdict(Judge(tmp_path), event(tmp_path), "warn")
    assert Judge.not_failing(warned) is warned
