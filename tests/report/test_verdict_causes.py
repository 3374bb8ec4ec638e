"""What excuses a block over the threshold (garbage collection, waiting for a CPU, many short
callbacks), each judged on its own, and how such blocks travel (in-process)."""

import json
from pathlib import Path

from loopguard import BlockEvent, Frame
from loopguard._events import Callback
from loopguard._judge import Judge, excuse
from loopguard._reportfile import verdicts

SHORT = Frame("/proj/app/handlers.py", 12, "handle")


def event(
    duration=0.25, *, gc_time=0.0, cpu_wait=None, callbacks=(), starved=False,
    holder_cpu_wait=None, gc_cpu_time=0.0,
):  # fmt: skip
    return BlockEvent(
        id=1, duration=duration, threshold=0.1, thread_name="MainThread", thread_ident=1,
        task_name=None, captured_after=0.1, starved=starved, loop_kind="asyncio", test=None,
        phase=None, start_ns=0, end_ns=int(duration * 1e9), gc_time=gc_time, cpu_wait=cpu_wait,
        callbacks=list(callbacks), holder_cpu_wait=holder_cpu_wait, gc_cpu_time=gc_cpu_time,
    )  # fmt: skip


def callbacks(*bounds):
    """Callbacks with these ``(min, max)`` bounds in milliseconds, each at SHORT."""
    return [
        Callback(
            first=i * 0.02,
            last=i * 0.02 + lo / 1e3,
            min=lo / 1e3,
            max=hi / 1e3,
            samples=1,
            in_callback=True,
            site=SHORT,
        )
        for i, (lo, hi) in enumerate(bounds)
    ]


def test_a_block_without_an_excuse_is_not_excused(tmp_path: Path):
    assert excuse(event(), 0.1) is None
    judged = Judge(tmp_path).judge(event(), test="t", phase="call", threshold=0.1, mode="fail")
    assert judged.outcome == "failed"
    short = Judge(tmp_path).judge(event(0.05), test="t", phase="call", threshold=0.1, mode="fail")
    assert short.outcome == "recorded"


def test_waiting_for_a_cpu_excuses_only_a_block_under_the_threshold_without_it():
    cause, reason = excuse(event(0.14, cpu_wait=0.064), 0.1)
    assert cause == "cpu-wait"
    assert reason == (
        "under the threshold without 64 ms of waiting for a CPU (the machine was overloaded; "
        "--loopguard-cpu-wait=include counts it)"
    )
    assert excuse(event(0.2, cpu_wait=0.064), 0.1) is None
    assert excuse(event(0.14, cpu_wait=0.064), 0.1, cpu_wait="include") is None
    # Unknown (no schedstat): judged as before.
    assert excuse(event(0.14, cpu_wait=None), 0.1) is None


def test_a_starvation_is_excused_by_its_gil_holders_wait_for_a_cpu():
    # 229 ms starved, 150 ms of it the holder waiting for a CPU while holding the GIL.
    starved = event(0.229, cpu_wait=0.0, holder_cpu_wait=0.15, starved=True)
    cause, reason = excuse(starved, 0.1)
    assert cause == "cpu-wait"
    assert reason == (
        "under the threshold without the 150 ms the GIL holder waited for a CPU while holding "
        "the GIL (the machine was overloaded; --loopguard-cpu-wait=include counts it)"
    )
    assert excuse(starved, 0.1, cpu_wait="include") is None
    # The loop thread's wait once the GIL was free covers other moments: the two add up.
    both = event(0.229, cpu_wait=0.04, holder_cpu_wait=0.1, starved=True)
    assert both.machine_wait() == (0.14, 0.1)
    cause, reason = excuse(both, 0.1)
    assert cause == "cpu-wait"
    assert (
        "the 100 ms the GIL holder waited for a CPU while holding the GIL and the 40 ms the "
        "loop thread waited for one once the GIL was free"
    ) in reason
    # Without the wait the starvation still reaches the threshold: not excused.
    assert excuse(event(0.4, cpu_wait=0.0, holder_cpu_wait=0.15, starved=True), 0.1) is None
    # Not known (no schedstat, or no holder seen): judged by its whole length.
    assert excuse(event(0.229, starved=True), 0.1) is None
    # A holder's wait means nothing for a block that is not starvation.
    assert excuse(event(0.229, holder_cpu_wait=0.15), 0.1) is None


def test_the_judge_explains_a_starvation_excused_by_its_holder(tmp_path: Path):
    ev = event(0.229, cpu_wait=0.0, holder_cpu_wait=0.15, starved=True)
    v = Judge(tmp_path).judge(ev, test="t", phase="call", threshold=0.1, mode="fail")
    assert (v.outcome, v.event.cause) == ("recorded", "cpu-wait")
    assert v.event.hint == (
        "the machine was overloaded: the thread holding the GIL was ready to run but waited "
        "for a CPU for much of the starvation"
    )
    back = BlockEvent.from_json(ev.to_json())
    assert back.holder_cpu_wait == 0.15
    # Through the JSON report and back (summary, merge, baseline read it so).
    data = {"events": [v.to_json(tmp_path)]}
    assert data["events"][0]["holder_cpu_wait_ms"] == 150.0
    [read] = verdicts(json.loads(json.dumps(data)))
    assert (read.event.holder_cpu_wait, read.event.cpu_wait) == (0.15, 0.0)


def test_each_excuse_is_judged_on_its_own():
    # 60 ms of collection and 60 ms of waiting: neither alone brings 200 ms under 100 ms.
    assert excuse(event(0.2, gc_time=0.06, cpu_wait=0.06), 0.1) is None
    assert excuse(event(0.2, gc_time=0.15, cpu_wait=0.15), 0.1)[0] == "gc"


def test_a_collection_slowed_by_a_busy_machine_is_taken_with_the_wait_by_its_cpu_time():
    # A starvation of 1.03 s: a holder collecting for 863 ms on the clock, and waiting for a
    # CPU 918 ms of the block. Neither alone brings it under 100 ms (169 ms, 114 ms left), and
    # the two overlap. The collector's 95 ms on a CPU and the wait leave 19 ms of other work.
    busy = event(1.032, gc_time=0.863, starved=True, holder_cpu_wait=0.918, gc_cpu_time=0.095)
    cause, reason = excuse(busy, 0.1)
    assert cause == "gc"
    assert reason == (
        "under the threshold without the 95 ms the garbage collector ran on a CPU and the "
        "918 ms spent waiting for one (the machine was overloaded; --loopguard-gc=include or "
        "--loopguard-cpu-wait=include counts them)"
    )
    # The loop thread's own collection and wait, not a starvation: the same.
    assert excuse(event(1.032, gc_time=0.863, cpu_wait=0.918, gc_cpu_time=0.095), 0.1)
    # Without the collector's CPU time (an older report), or with too little of it, or with
    # either counted by the settings: not excused.
    assert excuse(event(1.032, gc_time=0.863, starved=True, holder_cpu_wait=0.918), 0.1) is None
    short = event(1.032, gc_time=0.863, starved=True, holder_cpu_wait=0.918, gc_cpu_time=0.01)
    assert excuse(short, 0.1) is None
    assert excuse(busy, 0.1, gc="include") is None
    assert excuse(busy, 0.1, cpu_wait="include") is None
    assert excuse(busy, 0.1, interrupted=True) is None


def test_many_callbacks_none_reaching_the_threshold_are_excused():
    ev = event(callbacks=callbacks((0, 40), (5, 45), (0, 38)))
    cause, reason = excuse(ev, 0.1)
    assert cause == "callbacks"
    assert reason == (
        "3 callbacks in one loop iteration, the longest at most 45 ms at "
        "/proj/app/handlers.py:12 in handle; none reached the threshold"
    )


def test_callbacks_that_may_have_reached_the_threshold_are_not_excused():
    # The samples around the second leave room for 100 ms: it may have blocked that long.
    assert excuse(event(callbacks=callbacks((0, 40), (0, 100), (0, 38))), 0.1) is None
    # One callback seen: nothing to tell apart.
    assert excuse(event(callbacks=callbacks((0, 40))), 0.1) is None
    # Starvation is another thread's doing, not the loop's callbacks.
    assert excuse(event(callbacks=callbacks((0, 40), (0, 40)), starved=True), 0.1) is None


def test_a_block_cut_short_by_raise_mode_is_excused_only_by_garbage_collection(tmp_path: Path):
    busy = event(0.14, cpu_wait=0.064, callbacks=callbacks((0, 40), (0, 40)))
    assert excuse(busy, 0.1, interrupted=True) is None
    assert excuse(event(0.14, gc_time=0.05), 0.1, interrupted=True)[0] == "gc"
    v = Judge(tmp_path).judge(busy, test="t", phase="call", threshold=0.1, mode="raise")
    assert v.outcome == "failed"


def test_the_judge_records_an_excused_block_with_its_cause(tmp_path: Path):
    judge = Judge(tmp_path)
    v = judge.judge(event(0.14, cpu_wait=0.064), test="t", phase="call", threshold=0.1, mode="fail")
    assert (v.outcome, v.event.cause) == ("recorded", "cpu-wait")
    assert v.reason.startswith("under the threshold without 64 ms of waiting for a CPU")
    assert v.event.hint.startswith("the machine was overloaded")
    v = judge.judge(
        event(callbacks=callbacks((0, 40), (0, 40))), test="t", phase="call", threshold=0.1,
        mode="fail",
    )  # fmt: skip
    assert (v.outcome, v.event.cause) == ("recorded", "callbacks")
    strict = Judge(tmp_path, cpu_wait="include")
    v = strict.judge(
        event(0.14, cpu_wait=0.064), test="t", phase="call", threshold=0.1, mode="fail"
    )
    assert v.outcome == "failed"


def test_the_new_fields_survive_the_trip_to_an_xdist_controller():
    ev = event(0.14, gc_time=0.02, cpu_wait=0.064, callbacks=callbacks((0, 40), (3, 30)))
    back = BlockEvent.from_json(ev.to_json())
    assert back == ev
    assert back.callbacks[0].site == SHORT


def test_the_collector_s_share_is_a_number_in_the_json_report_and_read_back(tmp_path: Path):
    v = Judge(tmp_path).judge(
        event(0.25, gc_time=0.1234), test="t", phase="call", threshold=0.1, mode="fail"
    )
    data = v.to_json(tmp_path)
    assert data["gc_ms"] == 123.4
    [back] = verdicts({"events": [data]})
    assert abs(back.event.gc_time - 0.1234) < 1e-9
    # A report written before the field existed reads as no collection.
    del data["gc_ms"]
    assert verdicts({"events": [data]})[0].event.gc_time == 0.0
