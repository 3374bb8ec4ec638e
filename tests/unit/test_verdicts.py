"""The judge's verdict on one block, step by step, what a test's circumstances add to it, and
its ruling on a test's phase (in-process, no watchdog)."""

from pathlib import Path

import loopguard._judge as judge_module
from loopguard import BlockEvent, Frame
from loopguard._fixture import ExpectBlock, LagStats
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


def timed(tmp_path, duration, start_ms, **kwargs):
    """A block of ``duration`` seconds that began ``start_ms`` into the test."""
    ev = event(tmp_path, duration, **kwargs)
    ev.start_ns = int(start_ms * 1e6)
    ev.end_ns = ev.start_ns + int(duration * 1e9)
    return ev


def phase(judge, events, **kwargs):
    kwargs = {"floor": 0.1, "mode": "fail", **kwargs}
    return judge.judge_phase(events, test="t.py::t", phase="call", threshold=0.1, **kwargs)


def test_a_phase_ruling_keeps_only_blocks_over_the_floor(tmp_path):
    ruling = phase(Judge(tmp_path), [timed(tmp_path, 0.03, 0), timed(tmp_path, 0.25, 100)])
    assert [(v.event.duration, v.outcome) for v in ruling.verdicts] == [(0.25, "failed")]
    assert (ruling.expected, ruling.failures) == ([], [])
    lower = phase(Judge(tmp_path), [timed(tmp_path, 0.03, 0)], floor=0.02)
    assert [(v.outcome, v.reason) for v in lower.verdicts] == [("recorded", "under the threshold")]


def test_an_expect_block_covers_a_long_enough_block_inside_it(tmp_path):
    expect = ExpectBlock(threshold=0.2, where="t.py::t", start_ns=int(50e6), end_ns=int(400e6))
    inside, short, after = (
        timed(tmp_path, 0.25, 100),
        timed(tmp_path, 0.15, 120),
        timed(tmp_path, 0.3, 500),
    )
    ruling = phase(Judge(tmp_path), [inside, short, after], expects=[("call", expect)])
    assert [v.outcome for v in ruling.verdicts] == ["allowed", "failed", "failed"]
    assert ruling.expected == [(expect, ruling.verdicts[0].event)]
    assert ruling.failures == []  # it saw a block
    assert expect.events == []  # the hook applies the ruling, not the judge


def test_an_expect_block_still_open_covers_blocks_until_the_phase_ends(tmp_path):
    expect = ExpectBlock(threshold=0.1, where="t.py::t", start_ns=int(50e6))
    ev = timed(tmp_path, 0.25, 100)
    ruled = phase(Judge(tmp_path), [ev], expects=[("call", expect)], now_ns=int(1e9))
    assert ruled.verdicts[0].outcome == "allowed"
    ended = phase(Judge(tmp_path), [ev], expects=[("call", expect)], now_ns=int(90e6))
    assert ended.verdicts[0].outcome == "failed"


def test_an_expect_block_that_saw_nothing_fails_the_phase_that_opened_it(tmp_path):
    expect = ExpectBlock(threshold=0.3, where="t.py::t", start_ns=0, end_ns=int(1e9))
    failing = (
        "loopguard: expected the event loop to block for at least 300 ms inside "
        "expect_block() (t.py::t), but it did not"
    )
    assert phase(Judge(tmp_path), [], expects=[("call", expect)]).failures == [failing]
    # Not the phase that opened it; not a phase that raised (it fails anyway).
    assert phase(Judge(tmp_path), [], expects=[("setup", expect)]).failures == []
    assert phase(Judge(tmp_path), [], expects=[("call", expect)], finished=False).failures == []
    # A block it saw in an earlier phase is enough.
    expect.events.append(timed(tmp_path, 0.4, 0))
    assert phase(Judge(tmp_path), [], expects=[("call", expect)]).failures == []


def test_loop_lag_over_max_lag_fails_a_finished_phase(tmp_path):
    lag = LagStats(samples=20, max=0.3, p50=0.01, p99=0.3)
    asked = []

    def measure():
        asked.append(1)
        return lag

    ruling = phase(Judge(tmp_path), [], max_lag=0.1, lag=measure)
    assert ruling.failures == [
        "loopguard: event loop lag 300 ms exceeded max_lag 100 ms (from @pytest.mark.loopguard "
        "on t.py::t); lag max 300 ms, p50 10 ms, p99 300 ms over 20 samples"
    ]
    assert phase(Judge(tmp_path), [], max_lag=0.5, lag=measure).failures == []
    assert phase(Judge(tmp_path), [], max_lag=0.1, lag=measure, finished=False).failures == []
    assert len(asked) == 2  # measured only where it can fail the phase


def test_warnings_are_emitted_only_for_a_phase_that_ran_to_its_end(tmp_path):
    seen = []

    def warn(ev):
        seen.append(ev)
        return True

    raised = phase(Judge(tmp_path), [timed(tmp_path, 0.25, 0)], mode="warn", warn=warn,
                   finished=False)  # fmt: skip
    assert (raised.verdicts[0].outcome, seen) == ("warned", [])
    ran = phase(Judge(tmp_path), [timed(tmp_path, 0.25, 0)], mode="warn", warn=warn)
    assert seen == [ran.verdicts[0].event]


def test_a_stray_block_is_judged_under_its_tests_settings_and_never_fails(tmp_path):
    judge = Judge(tmp_path)
    late = timed(tmp_path, 0.25, 0)  # of t.py::t, in its call phase
    v = judge.judge_stray(late, threshold=0.1, mode="fail", floor=0.1)
    assert (v.test, v.phase, v.outcome, v.reason) == (
        "t.py::t",
        "call",
        "recorded",
        "ended after its test had finished",
    )
    outside = timed(tmp_path, 0.25, 0)
    outside.test = outside.phase = None
    v = judge.judge_stray(outside, threshold=0.1, mode="warn", floor=0.1)
    assert (v.test, v.phase, v.reason) == ("", "outside", "began outside any test")
    assert judge.judge_stray(late, threshold=0.1, mode="fail", enabled=False, floor=0.1) is None
    assert judge.judge_stray(late, threshold=0.3, mode="fail", floor=0.3) is None
