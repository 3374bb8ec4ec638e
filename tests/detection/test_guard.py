"""``loopguard.guard()``: the context manager and decorator, used without the plugin."""

import asyncio
import selectors
import threading
import time

import loopguard
import pytest

# Imported once, with this module: a test using pytester drops the modules imported while it
# ran, and a second import of uvloop or trio would make classes and functions loopguard has
# not instrumented.
try:
    import trio
except ImportError:
    trio = None
try:
    import uvloop
except ImportError:
    uvloop = None


def blocking_main(seconds):
    async def main():
        await asyncio.sleep(0)
        time.sleep(seconds)  # guard-test-block

    return main


def test_guard_raises_with_events_describing_the_block():
    with pytest.raises(loopguard.LoopBlockedError) as exc:
        with loopguard.guard(threshold="100ms"):
            asyncio.run(blocking_main(0.3)())
    (ev,) = exc.value.events
    assert 0.28 <= ev.duration <= 1.0
    assert ev.threshold == pytest.approx(0.1)
    assert ev.site.function.endswith("main")
    assert ev.site.filename == __file__
    assert "guard-test-block" in ev.site.source
    assert ev.stack[-1] == ev.site
    assert all(isinstance(f, loopguard.Frame) for f in ev.stack)
    assert ev.thread_name == threading.current_thread().name
    assert ev.task_name is not None
    assert ev.task_name.startswith("Task-")
    assert ev.captured_after is not None
    # Captured while the block lasted, not after it.
    assert 0.1 <= ev.captured_after <= ev.duration
    assert "event loop blocked for" in str(exc.value)


class OwnSelector:
    """A selector of a program's own: not a ``selectors.BaseSelector``, it hands every call to
    the platform's default selector."""

    def __init__(self):
        self._inner = selectors.DefaultSelector()

    def __getattr__(self, name):
        return getattr(self._inner, name)


# The default selector on Linux is an EpollSelector (watched at its epoll object, the case
# every other test runs); a PollSelector is watched through a subclass of its class, a
# selector that is not a BaseSelector through a proxy in its place.
@pytest.mark.parametrize("make", [selectors.PollSelector, OwnSelector], ids=["poll", "own"])
def test_a_loop_on_another_selector_is_watched_and_given_its_selector_back(make):
    selector = make()
    loop = asyncio.SelectorEventLoop(selector)
    try:
        with pytest.raises(loopguard.LoopBlockedError) as exc:
            with loopguard.guard(threshold="100ms"):
                loop.run_until_complete(blocking_main(0.3)())
        assert loop._selector is selector
        assert type(selector) is make
    finally:
        loop.close()
    (ev,) = exc.value.events
    assert 0.28 <= ev.duration <= 1.0
    assert "guard-test-block" in ev.site.source


def test_guard_passes_short_blocks():
    with loopguard.guard(threshold="200ms") as g:
        asyncio.run(blocking_main(0.02)())
    assert g.events == []


def test_guard_without_a_loop_does_nothing():
    with loopguard.guard():
        time.sleep(0.15)


def test_guard_as_a_decorator():
    @loopguard.guard(threshold=0.1)
    def run():
        asyncio.run(blocking_main(0.3)())

    with pytest.raises(loopguard.LoopBlockedError):
        run()
    # Reusable: a second call is judged afresh.
    with pytest.raises(loopguard.LoopBlockedError):
        run()


def test_nested_guards_judge_by_their_own_thresholds():
    with pytest.raises(loopguard.LoopBlockedError) as outer:
        with loopguard.guard(threshold="100ms"):
            with loopguard.guard(threshold="1s") as inner:
                asyncio.run(blocking_main(0.3)())
            assert inner.events == []
    assert len(outer.value.events) == 1


def test_guard_blocks_outside_it_are_not_counted():
    asyncio.run(blocking_main(0.2)())  # before: nobody watches
    with loopguard.guard(threshold="100ms") as g:
        asyncio.run(blocking_main(0.01)())
    assert g.events == []


def test_guard_does_not_mask_an_exception_from_the_block():
    with pytest.raises(ZeroDivisionError):
        with loopguard.guard(threshold="100ms"):
            asyncio.run(blocking_main(0.2)())
            1 / 0  # noqa: B018


def test_invalid_threshold_names_the_argument():
    with pytest.raises(ValueError, match=r"invalid value for threshold: 'fast' \(from loopguard"):
        loopguard.guard(threshold="fast")


def test_invalid_native_value_names_the_argument_and_the_choices():
    expected = r"invalid value for native: 'yes' \(from loopguard.*off.*on"
    with pytest.raises(ValueError, match=expected):
        loopguard.guard(native="yes")


def test_guard_in_an_autouse_fixture_without_the_plugin(pytester):
    pytester.makeconftest(
        """
import pytest, loopguard

@pytest.fixture(autouse=True)
def no_blocking():
    with loopguard.guard(threshold="100ms"):
        yield
"""
    )
    pytester.makepyfile(
        test_it="""
import asyncio, time

def test_blocks():
    async def main():
        time.sleep(0.3)
    asyncio.run(main())

def test_fine():
    asyncio.run(asyncio.sleep(0.01))
"""
    )
    result = pytester.runpytest_subprocess()
    # The test itself passed; the fixture's teardown reports the block.
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_blocks*",
            "*loopguard.LoopBlockedError*",
            "*test_it.py:5 in *main*",
        ]
    )


def test_guard_opened_inside_a_running_loop_watches_that_loop():
    # The loop started before anything watched loops: the guard watches it from its start,
    # as a context manager and as a decorator of a coroutine function.
    async def main():
        with loopguard.guard(threshold="100ms"):
            time.sleep(0.3)  # guard-inside-block

    @loopguard.guard(threshold="100ms")
    async def decorated():
        await asyncio.sleep(0)
        time.sleep(0.3)  # guard-inside-block
        await asyncio.sleep(0)

    for coro in (main, decorated):
        with pytest.raises(loopguard.LoopBlockedError) as exc:
            asyncio.run(coro())
        (ev,) = exc.value.events
        assert ev.duration >= 0.28
        assert "guard-inside-block" in ev.site.source
        assert ev.loop_kind == "asyncio"


def test_guards_inside_a_running_loop_see_each_block_once():
    async def main():
        with loopguard.guard(raise_=False) as outer:
            with loopguard.guard(raise_=False) as inner:
                time.sleep(0.25)  # guard-inner-block
                await asyncio.sleep(0)
            time.sleep(0.2)  # guard-outer-block
            await asyncio.sleep(0)
        return outer, inner

    outer, inner = asyncio.run(main())
    assert [e.site.source for e in inner.events] == ["time.sleep(0.25)  # guard-inner-block"]
    assert [e.site.source for e in outer.events] == [
        "time.sleep(0.25)  # guard-inner-block",
        "time.sleep(0.2)  # guard-outer-block",
    ]


@pytest.mark.parametrize("kind", ["asyncio", "uvloop"])
def test_a_loop_that_stops_inside_a_guard_does_not_look_blocked(kind):
    # A guard entered in one run of a loop and left in a later one (an async fixture run by
    # pytest-asyncio: setup, test and teardown each run the loop): the loop is not blocked
    # while it is not running, and its later run is watched as any loop is.
    if kind == "uvloop":
        if uvloop is None:
            pytest.skip("uvloop is not installed")
        loop = uvloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    g = loopguard.guard(threshold="100ms", raise_=False)

    async def enter():
        g.__enter__()

    try:
        loop.run_until_complete(enter())
        time.sleep(0.3)  # the loop is not running
        loop.run_until_complete(blocking_main(0.25)())
    finally:
        g.__exit__(None, None, None)
        loop.close()
    [ev] = g.events
    assert "guard-test-block" in ev.site.source and ev.duration >= 0.23


def test_a_trio_run_that_ends_inside_a_guard_does_not_look_blocked():
    if trio is None:
        pytest.skip("trio is not installed")
    g = loopguard.guard(threshold="100ms", raise_=False)

    async def enter():
        g.__enter__()

    async def blocks():
        await trio.sleep(0)
        time.sleep(0.25)  # guard-trio-block
        await trio.sleep(0)

    try:
        trio.run(enter)
        time.sleep(0.3)  # no trio run is going on
        trio.run(blocks)
    finally:
        g.__exit__(None, None, None)
    [ev] = g.events
    assert "guard-trio-block" in ev.site.source and ev.duration >= 0.23


class _SlowFinish:
    """An offload sampler whose thread a busy machine schedules late: stopping it takes
    300 ms on the loop's thread."""

    def __init__(self, sampler):
        self._sampler = sampler

    def finish(self):
        time.sleep(0.3)
        return self._sampler.finish()


@pytest.mark.linux_full  # offload_check() samples threads on the full Linux build only
@pytest.mark.parametrize("started", ["before", "inside"])
def test_loopguard_waiting_for_its_own_threads_is_not_the_loops_block(monkeypatch, started):
    # Closing a guard or a check waits on the loop's thread for the watchdog and the offload
    # sampler: that wait is loopguard's, never the code's block, on a loop registered when it
    # started (inside the guard) as on one attached while running (before it).
    from loopguard._runtime import runtime

    collect = runtime.collect

    def slow_collect(*args, **kwargs):
        time.sleep(0.3)
        return collect(*args, **kwargs)

    async def checked():
        async with loopguard.offload_check(threshold="100ms") as check:
            check._sampler = _SlowFinish(check._sampler)
            await asyncio.sleep(0.01)
        return check

    async def guarded():
        with loopguard.guard(threshold="100ms", raise_=False) as g:
            monkeypatch.setattr(runtime, "collect", slow_collect)
            await asyncio.sleep(0.01)
        monkeypatch.setattr(runtime, "collect", collect)
        return g

    if started == "inside":
        with loopguard.guard(threshold="100ms") as outer:
            check = asyncio.run(checked())
        assert outer.events == []
    else:
        check = asyncio.run(checked())
    check.assert_offloaded()
    assert check.events == []
    g = asyncio.run(guarded())
    assert g.events == []


@pytest.mark.linux_full
def test_a_block_just_before_a_check_closes_is_still_the_codes():
    # The check's own wait begins where the code's block ends: the block is still seen.
    async def main():
        async with loopguard.offload_check(threshold="100ms") as check:
            check._sampler = _SlowFinish(check._sampler)
            await asyncio.sleep(0)
            time.sleep(0.3)  # check-last-block
        return check

    check = asyncio.run(main())
    (ev,) = check.events
    assert "check-last-block" in ev.site.source
    assert 0.28 <= ev.duration < 0.55
