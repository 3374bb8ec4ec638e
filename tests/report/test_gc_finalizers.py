"""Garbage collection excuses only the collector's own work: a finalizer (``__del__``) or weakref
callback that the collector runs, and that blocks, is the code's block, failed at its line.

Run under every Python of the matrix: where the collector runs (at an allocation, or at the
interpreter's next check from 3.12 on) and how frames are named differ between versions.
"""

import json

import pytest
from garbage import GARBAGE_FILES, collected_in

HEADER = """
import asyncio, gc, threading, time, weakref
import pytest
from garbage import garbage_made


class Slow:
    def __init__(self):
        self.me = self  # a reference cycle: only the collector frees it

    def __del__(self):
        time.sleep(1.0)  # the sleeping finalizer


class Spin:
    def __init__(self):
        self.me = self

    def __del__(self):
        # 0.4 s of the CPU, however long a busy machine makes it wait for one.
        end = time.thread_time() + 0.4
        while time.thread_time() < end:  # the spinning finalizer
            pass


class Node:
    def __init__(self):
        self.me = self


def slow_callback(ref):
    time.sleep(0.4)  # the weakref callback
"""

INNER = dict(header=HEADER, args=("--loopguard-json=r.json",), files=GARBAGE_FILES)


def events(pytester):
    """The report's longest event of each test, by test name."""
    data = json.loads((pytester.path / "r.json").read_text())
    found = {}
    for e in sorted(data["events"], key=lambda e: e["duration_ms"]):
        found[e["test"].split("::")[-1]] = e
    return found


def assert_failed_at(inner, ev, marker):
    """``ev`` failed its test at the line marked ``marker``, as the code's block: most of the
    finalizer's time is not counted as garbage collection."""
    assert ev["outcome"] == "failed", ev
    assert ev["site"]["line"] == inner.line(marker), ev["site"]
    assert ev["duration_ms"] - ev["gc_ms"] >= 200, ev
    # A stretch no sample saw counts as the collector's: on an idle machine, only the one
    # before the first sample; on an overloaded one the watchdog may look late.
    if ev["gc_ms"] < ev["duration_ms"] / 2:
        assert ev["cause"] in (None, "cpu-wait"), ev
    if ev["cause"] is None:
        finalizers = "spent in finalizers (__del__, weakref callbacks) run by the garbage collector"
        assert finalizers in ev["hint"], ev


@pytest.mark.linux_full  # the samples of the GIL-free reader tell the finalizer apart
def test_a_blocking_finalizer_run_by_the_collector_fails_at_its_line(pytester, inner):
    result = inner.run(
        """
@pytest.mark.asyncio
async def test_del_collect():
    await asyncio.sleep(0)
    Slow()
    gc.collect()  # explicit

@pytest.mark.asyncio
async def test_del_spin():
    await asyncio.sleep(0)
    Spin()
    gc.collect()

@pytest.mark.asyncio
async def test_weakref_callback():
    await asyncio.sleep(0)
    node = Node()
    ref = weakref.ref(node, slow_callback)  # alive: called when the collector frees node
    del node
    gc.collect()
    assert ref() is None

@pytest.mark.asyncio
async def test_del_allocation():
    await asyncio.sleep(0)
    Slow()
    junk = [[] for _ in range(50_000)]  # the allocation
    assert junk
""",
    )
    result.assert_outcomes(failed=4)
    found = events(pytester)
    assert_failed_at(inner, found["test_del_collect"], "the sleeping finalizer")
    assert_failed_at(inner, found["test_del_spin"], "the spinning finalizer")
    assert_failed_at(inner, found["test_weakref_callback"], "the weakref callback")
    assert_failed_at(inner, found["test_del_allocation"], "the sleeping finalizer")
    # The hint names where the collection began when that is not the site.
    for test, marker in (
        ("test_del_collect", "# explicit"),
        ("test_del_allocation", "# the allocation"),
    ):
        started = f"in a collection started at test_it.py:{inner.line(marker)} in "
        if found[test]["cause"] is None:
            assert started in found[test]["hint"]
    result.stdout.fnmatch_lines([inner.site("the sleeping finalizer", "*__del__")])


@pytest.mark.linux_full  # starvation is told from the GIL
def test_a_finalizer_that_another_thread_collector_runs_starves_the_loop_at_its_line(
    pytester, inner
):
    result = inner.run(
        """
def hold_the_gil_for(seconds):
    # One C call that keeps the GIL, sized on this machine.
    sum(range(1_000_000))
    t = time.perf_counter()
    sum(range(5_000_000))
    per_million = (time.perf_counter() - t) / 5
    return int(1_000_000 * seconds / max(per_million, 1e-6))


class Hog:
    def __init__(self, n):
        self.n = n
        self.me = self

    def __del__(self):
        sum(range(self.n))  # the GIL-holding finalizer


N = hold_the_gil_for(1.0)  # sized outside the loop


@pytest.mark.asyncio
async def test_other_thread():
    n = N

    go = threading.Event()

    def work():
        go.wait()
        Hog(n)
        gc.collect(0)  # the young objects only: the collector's own work is short

    await asyncio.sleep(0)
    t = threading.Thread(target=work)
    t.start()
    # Started first: a loaded machine can be slow to start a thread, and Thread.start() waits
    # for that on the loop (a lock wait, not this test's starvation).
    await asyncio.sleep(0.05)
    go.set()
    while t.is_alive():
        await asyncio.sleep(0.001)
""",
    )
    result.assert_outcomes(failed=1)
    ev = events(pytester)["test_other_thread"]
    assert ev["starved"] is True
    if ev["gil"] != "other":
        # The sample the report shows caught the GIL between holders (seen on an overloaded
        # machine): the site is the loop thread's own, but the block is still the code's.
        assert ev["outcome"] == "failed", ev
        assert ev["duration_ms"] - ev["gc_ms"] >= 200, ev
        return
    assert ev["gil_holder"]["stack"][-1]["line"] == inner.line("the GIL-holding finalizer")
    assert_failed_at(inner, ev, "the GIL-holding finalizer")


@pytest.mark.linux_full  # the reader's samples
def test_a_collection_started_by_an_allocation_is_still_excused(pytester, inner):
    result = inner.run(
        """
@pytest.mark.asyncio
async def test_automatic(garbage_made):
    await asyncio.sleep(0)
    gc.enable()
    t = time.monotonic()
    junk = [[] for _ in range(5_000)]  # the allocation
    took = time.monotonic() - t
    print(f"COLLECTED IN {took:.3f}")
""",
        "-s",
    )
    took = collected_in(result)
    assert took > 0.15, f"the collection took {took} s: too quick to test"
    result.assert_outcomes(passed=1)
    ev = events(pytester)["test_automatic"]
    assert (ev["outcome"], ev["cause"]) == ("recorded", "gc")
    assert ev["gc_ms"] > ev["duration_ms"] - 100
    assert ev["site"]["line"] == inner.line("# the allocation")


def test_the_gil_taking_sampler_tells_a_finalizer_from_the_collector(pytester, inner):
    # Its samples are late (it waits for the GIL the collector holds): each speaks only for
    # the time after it can have been read.
    result = inner.run(
        """
@pytest.mark.asyncio
async def test_pure(garbage_made):
    await asyncio.sleep(0)
    t = time.monotonic()
    gc.collect()
    took = time.monotonic() - t
    print(f"COLLECTED IN {took:.3f}")

@pytest.mark.asyncio
async def test_del_collect():
    await asyncio.sleep(0)
    Slow()
    gc.collect()
""",
        "--loopguard-sampler=gil",
        "-s",
    )
    took = collected_in(result)
    assert took > 0.15, f"the collection took {took} s: too quick to test"
    result.assert_outcomes(passed=1, failed=1)
    found = events(pytester)
    assert (found["test_pure"]["outcome"], found["test_pure"]["cause"]) == ("recorded", "gc")
    assert_failed_at(inner, found["test_del_collect"], "the sleeping finalizer")
