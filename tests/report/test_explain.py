"""Blocks spent importing or in garbage collection are labelled, with a hint."""

import sys

import pytest
from garbage import GARBAGE_FILES, collected_in

pytestmark = pytest.mark.single_version

HEADER = """
import asyncio, gc, sys, time
import sys

import pytest
"""


INNER = dict(header=HEADER, files=GARBAGE_FILES)


def test_a_first_import_in_a_coroutine_is_labelled(inner):
    result = inner.run(
        """
@pytest.mark.asyncio
async def test_import():
    import heavy
""",
        heavy="import time\ntime.sleep(0.3)\n",
    )
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*heavy.py:2 in <module>",
            "    (the block was spent importing heavy.py (a first import inside a coroutine): "
            "import it at module level or at start-up)",
            "MEDIUM * failed  *heavy.py:2 in <module>  (importing) time.sleep(0.3)",
        ]
    )


GC_SOURCE = """
from garbage import garbage_made

@pytest.mark.asyncio
async def test_gc(garbage_made):
    await asyncio.sleep(0)
    t = time.monotonic()
    gc.collect()  # the collection
    took = time.monotonic() - t
    print(f"COLLECTED IN {took:.3f}")
"""


def test_a_block_that_is_garbage_collection_is_recorded_not_failed(pytester, inner):
    import json

    result = inner.run(GC_SOURCE, "--loopguard-json=r.json", "-s")
    took = collected_in(result)
    assert took is not None and took > 0.15, f"the collection took {took} s: too quick to test"
    result.assert_outcomes(passed=1)
    [ev] = json.loads((pytester.path / "r.json").read_text())["events"]
    assert ev["outcome"] == "recorded"
    assert ev["reason"].startswith("under the threshold without garbage collection")
    assert ev["cause"] == "gc"
    # The collector's own work, as a number: what brings the block under the threshold.
    assert ev["duration_ms"] - ev["gc_ms"] < 100
    assert json.loads((pytester.path / "r.json").read_text())["settings"]["gc"] == "exclude"


def test_gc_include_judges_the_whole_block(inner):
    # Waiting for a CPU counts too: on a loaded machine it would excuse the collection.
    result = inner.run(GC_SOURCE, "--loopguard-gc=include", "--loopguard-cpu-wait=include", "-s")
    took = collected_in(result)
    assert took is not None and took > 0.15, f"the collection took {took} s: too quick to test"
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "loopguard: garbage collection counts toward blocks (from --loopguard-gc), *",
            "*  >     gc.collect()  # the collection",
            "    (* ms of the block was garbage collection, called here explicitly)",
        ]
    )


def test_invalid_gc_value_is_a_usage_error(inner):
    result = inner.run("def test_x(): pass\n", "--loopguard-gc=sometimes", inprocess=True)
    assert result.ret == 4
    result.stderr.fnmatch_lines(
        [
            "*invalid value for --loopguard-gc: 'sometimes' (from the command line); "
            "expected one of exclude, include*"
        ]
    )


def test_guard_excludes_garbage_collection_unless_asked():
    import asyncio
    import gc

    import loopguard
    from garbage import make_garbage

    async def main():
        await asyncio.sleep(0)
        gc.collect()

    try:
        make_garbage(0.3)
        with loopguard.guard(threshold="50ms") as g:
            asyncio.run(main())
        assert g.events == []
        make_garbage(0.3)
        with pytest.raises(loopguard.LoopBlockedError) as exc:
            with loopguard.guard(threshold="50ms", gc="include"):
                asyncio.run(main())
        assert exc.value.events[0].gc_time > 0.05
    finally:
        gc.enable()
    with pytest.raises(ValueError, match="invalid value for gc: 'never'"):
        loopguard.guard(gc="never")


def test_hint_for_a_collection_started_by_an_allocation():
    from loopguard import BlockEvent, Frame
    from loopguard._explain import Collection, _gc_log, explain

    here = Frame(__file__, HINT_LINE, "test_hint_for_a_collection_started_by_an_allocation")
    ev = BlockEvent(
        id=1, duration=0.3, threshold=0.1, thread_name="MainThread", thread_ident=1,
        task_name=None, captured_after=0.1, starved=False, loop_kind="asyncio", test=None,
        phase=None, start_ns=10_000_000_000, end_ns=10_300_000_000, site=here, stack=[here],
    )  # fmt: skip
    _gc_log.append(Collection(10_050_000_000, 10_290_000_000, 1, here))
    try:
        explain(ev)
    finally:
        _gc_log.pop()
    assert ev.cause == "gc"
    assert abs(ev.gc_time - 0.24) < 1e-9
    assert ev.hint.startswith(
        "240 ms of the block was garbage collection, started by an allocation"
    )


HINT_LINE = 1  # the module docstring's line: any line that is not a gc.collect() call


def test_ordinary_blocks_get_no_label(inner):
    result = inner.run(
        """
@pytest.mark.asyncio
async def test_sleep():
    time.sleep(0.3)
""",
    )
    result.assert_outcomes(failed=1)
    assert "importing" not in result.stdout.str()
    assert "garbage collection" not in result.stdout.str()


def test_import_machinery_frames_without_a_module_body():
    from loopguard import Frame
    from loopguard._explain import _imported

    boot = "<frozen importlib._bootstrap>"
    user = Frame("app.py", 3, "handler")
    finding = [
        user,
        Frame(boot, 1, "_find_and_load"),
        Frame("<frozen importlib._bootstrap_external>", 9, "find_spec"),
    ]
    assert _imported(finding) == ""
    body = [user, Frame(boot, 1, "_find_and_load"), Frame("heavy.py", 2, "<module>")]
    assert _imported(body) == "heavy.py"
    assert _imported([user]) is None


# --- how a collection's time is split by the block's samples ---------------------------------
# A block of the loop thread (ident LOOP) starting at START, judged at a 100 ms threshold: the
# watchdog samples it every 20 ms.

LOOP, WORKER = 1, 2
START = 10_000_000_000
MS = 1_000_000
OUTER = ("/proj/app/main.py", 5, "main")
TRIGGER = ("/proj/app/jobs.py", 30, "run")  # the frame running when the collection began
FINALIZER = ("/proj/app/resource.py", 12, "Resource.__del__")


def frames(*places):
    from loopguard import Frame

    return [Frame(*p) for p in places]


def sample(offset_ms, count=1, *, at=(OUTER, TRIGGER), gil="loop", syscall=None, late=False,
           error=None, holder=None, holder_at=()):  # fmt: skip
    from loopguard._events import Sample

    return Sample(
        offset=offset_ms / 1e3, count=count, stack=frames(*at), gil=gil,
        gil_holder_ident=holder, gil_holder_stack=frames(*holder_at), late=late, error=error,
        task_name=None, syscall=syscall,
    )  # fmt: skip


def block(duration_ms, *samples, threshold=0.1, captured_after_ms=None):
    from loopguard import BlockEvent

    return BlockEvent(
        id=1, duration=duration_ms / 1e3, threshold=threshold, thread_name="MainThread",
        thread_ident=LOOP, task_name=None,
        captured_after=None if captured_after_ms is None else captured_after_ms / 1e3,
        starved=False, loop_kind="asyncio", test=None, phase=None, start_ns=START,
        end_ns=START + int(duration_ms * MS), samples=list(samples),
    )  # fmt: skip


def collection(start_ms, end_ms, thread=LOOP, trigger=TRIGGER, cpu_ms=0):
    from loopguard import Frame
    from loopguard._explain import Collection

    return Collection(
        START + start_ms * MS,
        START + end_ms * MS,
        thread,
        trigger and Frame(*trigger),
        cpu_ms * MS,
    )


def share_ms(ev, *collections):
    """``(collector, finalizers, elsewhere)`` in milliseconds."""
    from loopguard._explain import gc_share

    share = gc_share(ev, list(collections))
    return tuple(round(x / MS, 3) for x in share[:3])


def test_the_collector_at_work_in_the_frame_that_started_it_is_garbage_collection():
    assert share_ms(block(300, sample(25, 14)), collection(0, 300)) == (300, 0, 0)


def test_a_finalizer_during_a_collection_is_the_code_s_from_its_first_sample_on():
    # Before the first sample (25 ms) nothing was seen: it stays the collector's.
    in_del = sample(25, 14, at=(OUTER, TRIGGER, FINALIZER))
    assert share_ms(block(300, in_del), collection(0, 300)) == (25, 275, 0)
    # The collector first, then a finalizer: each sample speaks up to the next one.
    both = block(300, sample(25, 5), sample(125, 9, at=(OUTER, TRIGGER, FINALIZER)))
    assert share_ms(both, collection(0, 300)) == (125, 175, 0)


def test_only_the_part_of_a_collection_inside_the_block_counts():
    in_del = sample(25, 14, at=(OUTER, TRIGGER, FINALIZER))
    assert share_ms(block(300, in_del), collection(50, 200)) == (0, 150, 0)
    assert share_ms(block(300, in_del), collection(-100, 100)) == (25, 75, 0)
    assert share_ms(block(300, in_del), collection(300, 400)) == (0, 0, 0)
    # Two collections in one block, each judged on its own.
    two = block(300, sample(25, 4), sample(105, 10, at=(OUTER, FINALIZER)))
    assert share_ms(two, collection(0, 100), collection(150, 250, trigger=OUTER)) == (
        100, 100, 0,
    )  # fmt: skip


def test_a_system_call_or_letting_go_of_the_gil_in_a_collection_is_a_finalizer_s():
    # A finalizer written in C (a socket's close) shows no frame of its own.
    assert share_ms(block(300, sample(25, 14, syscall="close")), collection(0, 300)) == (25, 275, 0)
    released = sample(25, 14, gil="released")
    assert share_ms(block(300, released), collection(0, 300)) == (25, 275, 0)
    # The collector's own calls (memory management) are not named by the kernel report.
    unnamed = sample(25, 14, syscall="system call 11")
    assert share_ms(block(300, unnamed), collection(0, 300)) == (300, 0, 0)


def cpu_ms(ev, *collections):
    from loopguard._explain import gc_share

    return round(gc_share(ev, list(collections)).collector_cpu / MS, 3)


def test_the_collector_s_cpu_time_is_what_it_used_less_what_may_have_been_spent_otherwise():
    # 300 ms on the clock, 60 ms of it on a CPU (the rest waiting for one): all the collector's.
    assert cpu_ms(block(300, sample(25, 14)), collection(0, 300, cpu_ms=60)) == 60
    # Never more than the collector's own share of the clock.
    assert cpu_ms(block(300, sample(25, 14)), collection(0, 300, cpu_ms=400)) == 300
    # 175 ms in a finalizer, which may all have been on a CPU: 60 - 175 leaves nothing certain.
    both = block(300, sample(25, 5), sample(125, 9, at=(OUTER, TRIGGER, FINALIZER)))
    assert cpu_ms(both, collection(0, 300, cpu_ms=60)) == 0
    assert cpu_ms(both, collection(0, 300, cpu_ms=200)) == 25
    # Half the collection was before the block: its first 100 ms may have used 100 ms of CPU.
    assert cpu_ms(block(300, sample(25, 14)), collection(-100, 100, cpu_ms=150)) == 50
    # Not known (a collection logged without it): nothing.
    assert cpu_ms(block(300, sample(25, 14)), collection(0, 300)) == 0


def test_explain_sets_the_collector_s_cpu_time_of_a_real_collection():
    import gc

    from loopguard import BlockEvent, Frame
    from loopguard._explain import _collections, _gc_log, _on_gc, explain

    junk = [[] for _ in range(200_000)]
    for x in junk:
        x.append(x)  # a cycle: only the collector frees it
    del junk
    installed = _on_gc in gc.callbacks
    if not installed:
        gc.callbacks.append(_on_gc)
    _gc_log.clear()
    try:
        gc.collect()
    finally:
        if not installed:
            gc.callbacks.remove(_on_gc)
    [c] = _collections()
    # On a CPU at most as long as it took, and some of that time at least.
    assert 0 < c.cpu_ns <= c.end_ns - c.start_ns
    here = Frame(__file__, HINT_LINE, "test")
    ev = BlockEvent(
        id=1, duration=(c.end_ns - c.start_ns) / 1e9, threshold=0.001, thread_name="MainThread",
        thread_ident=c.thread, task_name=None, captured_after=None, starved=False,
        loop_kind="asyncio", test=None, phase=None, start_ns=c.start_ns, end_ns=c.end_ns,
        site=here, stack=[here],
    )  # fmt: skip
    explain(ev)
    assert ev.gc_cpu_time == c.cpu_ns / 1e9
    assert ev.gc_cpu_time <= ev.gc_time


def test_reading_the_log_survives_a_collection_that_appends_to_it_meanwhile():
    # Reading the log allocates (an event model frame per trigger), which can start a
    # collection, whose callback appends to the log: the read never sees it change under it.
    import gc

    from loopguard._explain import Collection, _collections, _gc_log

    saved = list(_gc_log)
    threshold = gc.get_threshold()

    import loopguard._events  # noqa: F401  (imported by the read otherwise)

    appended = []
    armed = [False]

    def append(phase, info):
        if armed[0] and phase == "stop" and len(appended) < 100:  # fewer than the log keeps
            appended.append(1)
            _gc_log.append(Collection(1, 2, 3, ("x.py", 1, "f"), 0))

    _gc_log.clear()
    _gc_log.extend(Collection(i, i + 1, 1, ("x.py", i, "f"), 0) for i in range(50))
    gc.callbacks.append(append)
    gc.set_threshold(1)  # a collection at (almost) every allocation
    try:
        armed[0] = True
        got = _collections()
    finally:
        armed[0] = False
        gc.set_threshold(*threshold)
        gc.callbacks.remove(append)
        _gc_log.clear()
        _gc_log.extend(saved)
    assert appended  # collections did run meanwhile
    assert [c.start_ns for c in got[:50]] == list(range(50))
    assert all(not isinstance(c.trigger, tuple) for c in got)


def test_the_same_function_at_another_line_is_not_where_the_collection_began():
    other_line = sample(25, 14, at=(OUTER, ("/proj/app/jobs.py", 31, "run")))
    assert share_ms(block(300, other_line), collection(0, 300)) == (25, 275, 0)
    # A frame without a line (0) is taken for the same place.
    no_line = sample(25, 14, at=(OUTER, ("/proj/app/jobs.py", 0, "run")))
    assert share_ms(block(300, no_line), collection(0, 300)) == (300, 0, 0)
    # No Python frame ran when it began: any frame seen is the code's.
    assert share_ms(block(300, sample(25, 14)), collection(0, 300, trigger=None)) == (25, 275, 0)


def test_loopguard_s_own_gc_callback_is_the_collector_s():
    from loopguard._explain import _ON_GC

    on_gc = sample(25, 14, at=(OUTER, TRIGGER, (_ON_GC.co_filename, 60, _ON_GC.co_name)))
    assert share_ms(block(300, on_gc), collection(0, 300)) == (300, 0, 0)


def test_a_sample_speaks_for_its_readings_intervals_not_for_a_gap_after_them():
    # One reading, then the watchdog looked again only 175 ms later: the reading speaks for
    # 1.5 intervals (30 ms); the gap was seen by no sample and stays the collector's.
    gap = block(300, sample(25, 1, at=(OUTER, FINALIZER)), sample(200, 5))
    assert share_ms(gap, collection(0, 300)) == (270, 30, 0)


def test_the_last_of_a_full_list_of_samples_speaks_for_its_first_reading_only():
    # At a 10 ms threshold the watchdog samples every 2 ms; past 200 distinct samples it folds
    # every later reading into the last one, whatever it showed.
    first = [sample(k, 1, at=(OUTER, TRIGGER, ("/proj/app/jobs.py", 40 + k % 2, "step")))
             for k in range(199)]  # fmt: skip
    full = block(400, *first, sample(199, 50, at=(OUTER, FINALIZER)), threshold=0.01)
    collector, finalizers, _ = share_ms(full, collection(0, 400, trigger=("x.py", 1, "f")))
    assert finalizers == 199 + 3  # the 199 single readings, 1 ms each, and 1.5 intervals
    assert collector == 400 - finalizers


def test_a_late_sample_speaks_only_from_when_it_can_have_been_read():
    # Read by taking the GIL: the first reading was in hand 110 ms into the block, and the
    # later ones an interval apart at least, the last one at most at the end.
    late = sample(100, 10, at=(OUTER, TRIGGER, FINALIZER), gil="unknown", late=True)
    assert share_ms(block(300, late, captured_after_ms=110), collection(0, 300)) == (110, 190, 0)
    assert share_ms(block(300, late), collection(0, 300)) == (120, 180, 0)
    # Asked for at 100 ms, read once the collection ended (the next reading was asked for an
    # interval after it was in hand): it says nothing of the collection.
    after = block(
        330,
        sample(100, 1, at=(OUTER, ("/proj/app/jobs.py", 31, "run")), gil="unknown", late=True),
        sample(320, 1, gil="unknown", late=True),
    )
    assert share_ms(after, collection(0, 300)) == (300, 0, 0)


def test_another_thread_s_collection_is_judged_on_its_stack_while_it_holds_the_gil():
    worker = collection(0, 300, thread=WORKER)

    def starved(**kw):
        return block(300, sample(25, 14, at=(OUTER,), gil="other", **kw))

    assert share_ms(starved(holder=WORKER, holder_at=(OUTER, TRIGGER)), worker) == (300, 0, 0)
    assert share_ms(starved(holder=WORKER, holder_at=(TRIGGER, FINALIZER)), worker) == (
        25, 275, 0,
    )  # fmt: skip
    # The GIL with a third thread, or the loop thread running: the collector was not at work.
    assert share_ms(starved(holder=3, holder_at=(OUTER,)), worker) == (25, 0, 275)
    assert share_ms(block(300, sample(25, 14, at=(OUTER,))), worker) == (25, 0, 275)
    # Who held the GIL is not known: the samples cannot tell.
    unknown = block(300, sample(25, 14, at=(OUTER,), gil="unknown"))
    assert share_ms(unknown, worker) == (300, 0, 0)


def test_an_unreadable_sample_tells_nothing():
    bad = block(300, sample(25, 14, at=(), error="the stack changed while it was read"))
    assert share_ms(bad, collection(0, 300)) == (300, 0, 0)


def test_a_finalizer_s_block_is_named_and_not_excused():
    from loopguard import Frame
    from loopguard._explain import _gc_log, explain
    from loopguard._judge import excuse

    ev = block(300, sample(25, 14, at=(OUTER, TRIGGER, FINALIZER)))
    ev.site = Frame(*FINALIZER)
    _gc_log.append(collection(0, 300))
    try:
        explain(ev)
    finally:
        _gc_log.pop()
    assert abs(ev.gc_time - 0.025) < 1e-9
    assert ev.cause is None
    assert ev.hint == (
        "275 ms of the block was spent in finalizers (__del__, weakref callbacks) run by the "
        "garbage collector, in a collection started at /proj/app/jobs.py:30 in run: make them "
        "quick, or release what they hold explicitly"
    )
    assert excuse(ev, 0.1) is None
    # A finalizer in a library: the site is the project's line where the collection began.
    ev = block(300, sample(25, 14, at=(OUTER, TRIGGER, FINALIZER)))
    ev.site = Frame(*TRIGGER)
    _gc_log.append(collection(0, 300))
    try:
        explain(ev)
    finally:
        _gc_log.pop()
    assert ev.hint.startswith(
        "275 ms of the block was spent in finalizers (__del__, weakref callbacks) run by the "
        "garbage collector, in a collection started here: "
    )


def test_a_long_collection_is_remembered_with_the_thread_and_frame_that_started_it():
    import gc
    import threading

    from loopguard import Frame
    from loopguard._explain import _gc_log, install_gc_log

    class Node:
        def __init__(self):
            self.me = self

    install_gc_log()
    gc.disable()
    try:
        junk = [Node() for _ in range(300_000)]
        del junk
        line = sys._getframe().f_lineno + 1
        gc.collect()
    finally:
        gc.enable()
    c = _gc_log[-1]
    assert c.end_ns - c.start_ns >= 1_000_000
    assert c.thread == threading.get_ident()
    name = "test_a_long_collection_is_remembered_with_the_thread_and_frame_that_started_it"
    assert c.trigger == Frame(__file__, line, name)
