"""Loops nobody expects: shared, long-lived, concurrent, abandoned and many."""

import pytest

pytestmark = pytest.mark.single_version

HEADER = """
import asyncio, threading, time
import pytest

async def blocker():
    await asyncio.sleep(0.01)
    time.sleep(0.4)  # the blocking line

class Rendezvous:
    # Lets n loops wait for each other without blocking (a threading.Barrier would).
    def __init__(self, n):
        self.n, self.count, self.lock = n, 0, threading.Lock()
    async def wait(self):
        with self.lock:
            self.count += 1
        while self.count < self.n:
            await asyncio.sleep(0.005)
"""


INNER = dict(header=HEADER, args=("-p", "no:randomly"))


def test_loop_from_a_session_fixture_reused_by_many_tests(inner):
    result = inner.run(
        """
@pytest.fixture(scope="session")
def loop():
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()

@pytest.mark.parametrize("i", range(5))
def test_fine(loop, i):
    loop.run_until_complete(asyncio.sleep(0.02))

def test_blocks(loop):
    loop.run_until_complete(blocker())

def test_fine_after(loop):
    loop.run_until_complete(asyncio.sleep(0.02))
""",
    )
    result.assert_outcomes(passed=6, failed=1)
    result.stdout.fnmatch_lines(
        [
            inner.site("# the blocking line", "blocker"),
            "FAILED test_it.py::test_blocks - loopguard: * at *",
        ]
    )


def test_pytest_asyncio_session_scoped_loop(inner):
    result = inner.run(
        """
pytestmark = pytest.mark.asyncio(loop_scope="session")

async def test_one():
    await asyncio.sleep(0.02)

async def test_blocks():
    await blocker()

async def test_three():
    await asyncio.sleep(0.02)
""",
    )
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(
        [
            inner.site("# the blocking line", "blocker"),
            "FAILED test_it.py::test_blocks - loopguard: * at *",
        ]
    )


BACKGROUND = """
@pytest.fixture(scope="session")
def bg():
    loop = asyncio.new_event_loop()
    t = threading.Thread(target=loop.run_forever, name="bg-loop", daemon=True)
    t.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    t.join()
    loop.close()

def block_in(loop, seconds):
    # Returns once the block has begun (the loop leaves its selector before the callback runs).
    started = threading.Event()
    def callback():
        started.set()
        time.sleep(seconds)  # the late block
    loop.call_soon_threadsafe(callback)
    started.wait()
"""


def test_background_loop_for_the_whole_session_blames_the_running_test(inner):
    result = inner.run(
        BACKGROUND
        + """
def on_the_loop(loop, coro):
    return asyncio.run_coroutine_threadsafe(coro, loop).result()

def test_first(bg):
    on_the_loop(bg, asyncio.sleep(0.02))

def test_submits_blocking_work(bg):
    on_the_loop(bg, blocker())

def test_while_a_callback_blocks(bg):
    done = threading.Event()
    def callback():
        time.sleep(0.4)  # callback blocking line
        done.set()
    bg.call_soon_threadsafe(callback)
    done.wait(10)  # this thread does nothing meanwhile
    time.sleep(0.2)  # and lets the loop report the block's end before the test ends

def test_last(bg):
    on_the_loop(bg, asyncio.sleep(0.3))
""",
    )
    result.assert_outcomes(passed=2, failed=2)
    result.stdout.fnmatch_lines(
        [
            inner.site("# the blocking line", "blocker"),
            "*loop thread 'bg-loop', asyncio loop*",
            inner.site("# callback blocking line", "*callback"),
            "*loop thread 'bg-loop', asyncio loop*",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "FAILED test_it.py::test_submits_blocking_work - loopguard*",
            "FAILED test_it.py::test_while_a_callback_blocks - loopguard*",
        ]
    )


def test_two_loops_blocking_at_once_in_two_threads(inner):
    result = inner.run(
        """
def test_both():
    barrier = Rendezvous(2)

    async def first():
        await asyncio.sleep(0.01)
        await barrier.wait()
        time.sleep(0.4)  # first blocking line

    async def second():
        await asyncio.sleep(0.01)
        await barrier.wait()
        threading.Event().wait(0.5)  # second blocking line

    threads = [
        threading.Thread(target=asyncio.run, args=(first(),), name="loop-one"),
        threading.Thread(target=asyncio.run, args=(second(),), name="loop-two"),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
""",
    )
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    assert "block 1 of 2" in out and "block 2 of 2" in out and "block 3 of" not in out
    # Each event carries its own thread's stack.
    for marker, function, thread in (
        ("# first blocking line", "*first", "loop-one"),
        ("# second blocking line", "*second", "loop-two"),
    ):
        result.stdout.fnmatch_lines(
            [
                "*loopguard: block ? of 2: event loop blocked*",
                inner.site(marker, function),
                f"*loop thread '{thread}', asyncio loop*",
            ]
        )


def test_loop_left_by_an_exception_and_closed_without_being_stopped(inner):
    result = inner.run(
        """
def test_escapes():
    loop = asyncio.new_event_loop()
    def boom():
        time.sleep(0.4)  # blocking before escaping
        raise SystemExit(3)  # escapes run_forever (other exceptions are logged)
    loop.call_soon(boom)
    with pytest.raises(SystemExit):
        loop.run_forever()  # never stopped
    assert not loop.is_running()
    loop.close()

def test_next_loop_is_fine():
    asyncio.run(asyncio.sleep(0.3))
    from loopguard import _native
    assert _native.registered_loops() == 0
""",
    )
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines(
        [
            inner.site("# blocking before escaping", "*boom"),
            "FAILED test_it.py::test_escapes - loopguard*",
        ]
    )


def test_thread_exiting_inside_its_running_loop(inner):
    result = inner.run(
        """
import _thread

def test_exits():
    loop = asyncio.new_event_loop()
    def bye():
        time.sleep(0.4)  # blocking before the thread exits
        _thread.exit()
    loop.call_soon(bye)
    t = threading.Thread(target=loop.run_forever, name="leaving")
    t.start()
    t.join()

def test_nothing_left():
    from loopguard import _native
    assert _native.registered_loops() == 0
""",
    )
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines(
        [
            inner.site("# blocking before the thread exits", "*bye"),
            "*loop thread 'leaving', asyncio loop*",
        ]
    )


def test_thread_exiting_with_its_trio_guest_run_still_registered(inner):
    pytest.importorskip("trio")
    result = inner.run(
        """
import queue, trio
from loopguard import _native

def test_abandoned():
    def host():
        calls = queue.Queue()
        started = []
        async def main():
            started.append(1)
            await trio.sleep(0.01)
            time.sleep(0.4)  # guest blocking line
            await trio.sleep(3600)  # never finishes: the host goes away
        trio.lowlevel.start_guest_run(
            main, run_sync_soon_threadsafe=calls.put, done_callback=lambda outcome: None
        )
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            try:
                calls.get(timeout=0.05)()
            except queue.Empty:
                pass
        assert _native.registered_loops() == 1
        # the thread exits here with the run registered
    t = threading.Thread(target=host, name="guest-host")
    t.start()
    t.join()
    assert _native.registered_loops() == 0

def test_later_loops_are_fine():
    asyncio.run(asyncio.sleep(0.3))
    assert _native.registered_loops() == 0
""",
    )
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines(
        [
            inner.site("# guest blocking line", "*main"),
            "*loop thread 'guest-host', trio run*",
            "FAILED test_it.py::test_abandoned - loopguard*",
        ]
    )


@pytest.mark.parametrize("kind", ["asyncio", "uvloop"])
def test_200_loops_in_200_threads(inner, kind):
    if kind == "uvloop":
        pytest.importorskip("uvloop")
    runner = "asyncio.run" if kind == "asyncio" else "uvloop.run"
    result = inner.run(
        f"""
{"import uvloop" if kind == "uvloop" else ""}

def test_many():
    async def work(i):
        await asyncio.sleep(0.5)  # every loop is running by now
        for _ in range(5):
            await asyncio.sleep(0.05)
        if i == 137:
            time.sleep(0.8)  # loop 137 blocks here
        for _ in range(5):
            await asyncio.sleep(0.05)

    threads = [
        threading.Thread(target={runner}, args=(work(i),), name=f"loop-{{i}}")
        for i in range(200)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    from loopguard import _native
    assert _native.registered_loops() == 0
""",
        "--loopguard-threshold=200ms",
    )
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            inner.site("# loop 137 blocks here", "*work"),
            f"*loop thread 'loop-137', {kind} loop*",
        ]
    )
    # No other loop blocked anywhere in the test's code. (On a loaded 2-core machine some of
    # the 200 threads may really wait more than the threshold for the CPU or the GIL when they
    # wake up: those are reported as starved, at their selector, and are not asserted on.)
    blocking = f"test_it.py:{inner.line('# loop 137 blocks here')} in"
    sites = [
        s.strip()
        for s in result.stdout.lines
        if s.startswith("    test_it.py:") and " in " in s and "File" not in s
    ]
    assert sites and all(s.startswith(blocking) for s in sites), sites


def json_events(pytester):
    import json

    return json.loads((pytester.path / "lg.json").read_text())["events"]


def test_background_block_ending_in_a_later_phase_fails_that_phase(pytester, inner):
    result = inner.run(
        BACKGROUND
        + """
@pytest.fixture
def slow_teardown():
    yield
    time.sleep(0.9)  # the loop's block ends while this teardown runs

def test_leaves_its_loop_blocked(bg, slow_teardown):
    block_in(bg, 0.4)

def test_next(bg):
    pass
""",
        "--loopguard-json=lg.json",
    )
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_leaves_its_loop_blocked*",
            inner.site("# the late block", "*callback"),
        ]
    )
    [ev] = json_events(pytester)
    assert (ev["test"], ev["phase"], ev["outcome"]) == (
        "test_it.py::test_leaves_its_loop_blocked",
        "teardown",
        "failed",
    )


@pytest.mark.parametrize("xdist", [(), ("-n", "1")], ids=["", "xdist"])
def test_background_block_ending_after_its_test_is_recorded(pytester, inner, xdist):
    # Under xdist the worker hands the block to the controller when it ends its session: no
    # report carries it.
    result = inner.run(
        BACKGROUND
        + """
def test_leaves_its_loop_blocked(bg):
    block_in(bg, 0.4)

def test_next(bg):
    time.sleep(0.9)  # the block ends during this test, which it does not belong to
""",
        "--loopguard-json=lg.json",
        *xdist,
    )
    # Neither test fails: the block began in the first, whose report was already written.
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        [
            "*= loopguard: blocking hotspots =*",
            f"MEDIUM * recorded  test_it.py:{inner.line('# the late block')} in *callback*",
        ]
    )
    # A loaded machine may add a recorded wait for a CPU.
    [ev] = [e for e in json_events(pytester) if e["cause"] != "cpu-wait"]
    assert (ev["test"], ev["phase"], ev["outcome"], ev["reason"]) == (
        "test_it.py::test_leaves_its_loop_blocked",
        "call",
        "recorded",
        "ended after its test had finished",
    )


def test_block_outside_any_test_is_recorded(pytester, inner):
    result = inner.run(
        """
# A loop run while the module is collected.
asyncio.run(blocker())

def test_fine():
    pass
""",
        "--loopguard-json=lg.json",
    )
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [
            f"MEDIUM * recorded  {inner.site('# the blocking line', 'blocker')[1:]}*",
            "1 block at 1 call site in 0 tests, * blocked in total: 1 recorded",
        ]
    )
    [ev] = json_events(pytester)
    assert (ev["test"], ev["phase"], ev["outcome"], ev["reason"]) == (
        "",
        "outside",
        "recorded",
        "began outside any test",
    )
    # The JSON report's per-test totals list tests only.
    import json

    assert json.loads((pytester.path / "lg.json").read_text())["tests"] == []


def test_background_block_outliving_many_short_tests_belongs_to_the_test_it_began_in(
    pytester, inner
):
    # Hundreds of tests begin and end while the block lasts: each switches loopguard's context
    # twice or more before the block is even detected.
    result = inner.run(
        BACKGROUND
        + """
def test_leaves_its_loop_blocked(bg):
    block_in(bg, 1.5)

@pytest.mark.parametrize("i", range(600))
def test_short(bg, i):
    pass

def test_waits_for_the_block_to_end(bg):
    time.sleep(2.0)
""",
        "--loopguard-threshold=500ms",
        "--loopguard-json=lg.json",
    )
    result.assert_outcomes(passed=602)
    [ev] = json_events(pytester)
    assert (ev["test"], ev["phase"], ev["outcome"], ev["reason"]) == (
        "test_it.py::test_leaves_its_loop_blocked",
        "call",
        "recorded",
        "ended after its test had finished",
    )


def test_a_finished_tests_marker_still_judges_its_late_block(pytester, inner):
    # The test that began the block is over when the block ends: its own settings (here: off)
    # decide, not those of the test running then.
    result = inner.run(
        BACKGROUND
        + """
@pytest.mark.loopguard(enabled=False)
def test_leaves_its_loop_blocked_unchecked(bg):
    block_in(bg, 0.4)

def test_next(bg):
    time.sleep(0.9)

@pytest.mark.loopguard(threshold="1s")
def test_leaves_a_short_block_under_its_threshold(bg):
    block_in(bg, 0.4)

def test_after(bg):
    time.sleep(0.9)

def test_leaves_its_loop_blocked_checked(bg):
    block_in(bg, 0.4)

def test_last(bg):
    time.sleep(0.9)
""",
        "--loopguard-json=lg.json",
    )
    result.assert_outcomes(passed=6)
    [ev] = json_events(pytester)
    assert (ev["test"], ev["outcome"]) == (
        "test_it.py::test_leaves_its_loop_blocked_checked",
        "recorded",
    )
