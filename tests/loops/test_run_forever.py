"""The ``run_forever`` loopguard gives asyncio's loops: a native callable, so that no frame of
loopguard's stays under a running loop's callbacks; the common case (a loop on an
``EpollSelector``) watched natively, any other through the Python layer, each run undone
whatever way it ends. Used without the plugin, through ``guard()``."""

import asyncio
import inspect
import os
import select
import selectors
import sys
import threading
import time
import traceback

import loopguard
import pytest
from loopguard import _native
from loopguard._asyncio import adapter
from loopguard._runtime import runtime

linux_full = pytest.mark.skipif(
    _native.portable() is not None, reason="the epoll hook is Linux-only"
)


def blocks(seconds):
    """A coroutine that blocks at once, before it ever awaits."""

    async def main():
        time.sleep(seconds)  # first-instant-block

    return main()


def test_the_patch_looks_like_the_method_it_wraps():
    with loopguard.guard(threshold="5s"):
        pass
    patched = asyncio.BaseEventLoop.run_forever
    original = patched.__wrapped__
    assert patched._loopguard is True
    assert isinstance(patched, _native.RunForever)
    assert inspect.isfunction(original)
    assert patched.__doc__ == original.__doc__
    assert patched.__qualname__ == "BaseEventLoop.run_forever"
    assert patched.__name__ == "run_forever"
    assert str(inspect.signature(patched)) == "(self)"
    loop = asyncio.new_event_loop()
    try:
        bound = loop.run_forever
        assert bound.__self__ is loop
        assert bound.__func__ is patched
        assert str(inspect.signature(bound)) == "()"
    finally:
        loop.close()


def test_no_loopguard_frame_under_a_running_loops_callbacks():
    """Asyncio's debug mode records where each handle was created: nothing of loopguard's in
    it, nor in a traceback through the loop."""
    seen = {}

    async def main():
        loop = asyncio.get_running_loop()
        handle = loop.call_soon(lambda: None)
        seen["source"] = [f.filename for f in handle._source_traceback]
        seen["stack"] = traceback.format_stack()

    loop = asyncio.new_event_loop()
    loop.set_debug(True)
    try:
        with loopguard.guard(threshold="5s"):
            loop.run_until_complete(main())
    finally:
        loop.close()
    assert seen["source"], "debug mode records the handle's creation"
    assert any(f.endswith("base_events.py") for f in seen["source"])
    package = os.path.dirname(loopguard.__file__)
    assert not [f for f in seen["source"] if f.startswith(package)]
    assert not [line for line in seen["stack"] if package in line]
    assert not [line for line in seen["stack"] if "_asyncio.py" in line]


def _blocked_run(loop):
    """The events of ``loop`` running ``blocks(0.4)`` under a 100 ms guard (closed after)."""
    try:
        with pytest.raises(loopguard.LoopBlockedError) as exc:
            with loopguard.guard(threshold="100ms"):
                loop.run_until_complete(blocks(0.4))
    finally:
        loop.close()
    return exc.value.events


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(selectors.DefaultSelector, id="epoll-native"),
        pytest.param(selectors.PollSelector, id="poll-python"),
    ],
)
def test_a_block_in_the_first_instant_of_a_run_is_caught(make):
    (ev,) = _blocked_run(asyncio.SelectorEventLoop(make()))
    assert ev.duration >= 0.35
    assert "first-instant-block" in ev.site.source


def test_a_block_at_the_end_of_a_run_is_caught():
    async def main():
        await asyncio.sleep(0.01)
        asyncio.get_running_loop().call_soon(time.sleep, 0.4)  # ends with the run

    loop = asyncio.new_event_loop()
    try:
        with pytest.raises(loopguard.LoopBlockedError) as exc:
            with loopguard.guard(threshold="100ms"):
                loop.run_until_complete(main())
                loop.run_until_complete(asyncio.sleep(0))  # the blocking callback runs here
    finally:
        loop.close()
    (ev,) = exc.value.events
    assert ev.duration >= 0.35


@linux_full
def test_each_run_is_undone_however_it_ends():
    epoll_type = select.epoll
    loop = asyncio.new_event_loop()
    selector = loop._selector
    epoll = selector._selector
    assert isinstance(epoll, epoll_type)

    def during():
        during.seen = (
            type(selector._selector).__name__,
            _native.registered_loops(),
            adapter.is_watched(loop),
            adapter.thread_slot() is not None,
        )

    def interrupt():
        during()
        raise KeyboardInterrupt

    try:
        with loopguard.guard(threshold="5s"):
            loop.call_soon(during)
            loop.call_soon(loop.stop)
            loop.run_forever()
            assert during.seen == ("EpollProxy", 1, True, True)
            loop.call_soon(interrupt)
            with pytest.raises(KeyboardInterrupt):
                loop.run_forever()
            assert during.seen == ("EpollProxy", 1, True, True)
            # Parked until its next run: its proxy stays, nothing else does.
            assert type(selector._selector).__name__ == "EpollProxy"
            assert selector._selector.inner is epoll
            assert (_native.registered_loops(), _native.parked_loops()) == (0, 1)
            assert not adapter.is_watched(loop)
            assert adapter.thread_slot() is None
            # Runs again, watched again.
            loop.run_until_complete(asyncio.sleep(0))
            assert (_native.registered_loops(), _native.parked_loops()) == (0, 1)
            loop.close()
            assert (_native.registered_loops(), _native.parked_loops()) == (0, 0)
    finally:
        loop.close()
    assert _native.registered_loops() == 0


@linux_full
def test_a_parked_loop_is_not_watched_between_its_runs_and_is_in_its_next():
    loop = asyncio.new_event_loop()
    selector = loop._selector
    slots = []

    async def note_slot():
        slots.append(adapter.thread_slot().id)

    try:
        with pytest.raises(loopguard.LoopBlockedError) as exc:
            with loopguard.guard(threshold="100ms"):
                loop.run_until_complete(note_slot())
                proxy = selector._selector
                time.sleep(0.4)  # between two runs: the loop is not running
                loop.run_until_complete(asyncio.sleep(0.15))  # waits in the parked proxy's poll
                loop.run_until_complete(note_slot())
                assert selector._selector is proxy, "the same proxy, parked and resumed"
                loop.run_until_complete(blocks(0.4))
    finally:
        loop.close()
    assert slots[0] == slots[1], "the same registration, resumed"
    (ev,) = exc.value.events
    assert "first-instant-block" in ev.site.source
    assert ev.duration >= 0.35


@linux_full
def test_a_parked_loop_waits_as_asked_when_nobody_watches_it():
    loop = asyncio.new_event_loop()
    try:
        with loopguard.guard(threshold="100ms"):
            loop.run_until_complete(asyncio.sleep(0))
        proxy = loop._selector._selector
        assert type(proxy).__name__ == "EpollProxy"
        # The runtime is released: runs go to the original, through the parked proxy's poll,
        # which waits as long as asked (no cap) and sees the loop's I/O.
        r, w = os.pipe()
        try:
            loop.call_later(0.05, os.write, w, b"x")
            got = loop.create_future()
            loop.add_reader(r, lambda: got.set_result(os.read(r, 1)))
            assert loop.run_until_complete(got) == b"x"
            loop.remove_reader(r)
        finally:
            os.close(r)
            os.close(w)
        started = time.monotonic()
        loop.run_until_complete(asyncio.sleep(0.3))
        assert time.monotonic() - started >= 0.29
    finally:
        loop.close()
    with pytest.raises(ValueError, match="closed epoll"):
        proxy.poll(0)


@linux_full
def test_the_proxy_returns_as_many_events_as_asked_whatever_its_buffer():
    """While the loop runs (not parked), ``poll`` is the proxy's own ``epoll_wait``, into a
    buffer of 8 or 64 events on the stack or one on the heap: each size, at and past its
    edges, returns what ``epoll.poll`` would, and bad ``maxevents`` are refused as it does."""
    pipes = [os.pipe() for _ in range(70)]
    seen = {}

    async def main():
        proxy = asyncio.get_running_loop()._selector._selector
        assert type(proxy).__name__ == "EpollProxy"
        for _, w in pipes:  # a pipe's write end is ready at once
            proxy.register(w, select.EPOLLOUT)
        try:
            for n in (1, 7, 8, 9, 63, 64, 65, 70, 100, -1):
                events = proxy.poll(0, n)
                seen[n] = (len(events), {fd for fd, _ in events} <= {w for _, w in pipes})
            seen["masks"] = {mask for _, mask in proxy.poll(0)}
            for bad in (0, -2):
                with pytest.raises(ValueError, match="maxevents"):
                    proxy.poll(0, bad)
        finally:
            for _, w in pipes:
                proxy.unregister(w)

    try:
        with loopguard.guard(threshold="5s"):
            asyncio.run(main())
    finally:
        for r, w in pipes:
            os.close(r)
            os.close(w)
    expected = {n: (min(n, 70) if n > 0 else 70, True) for n in (1, 7, 8, 9, 63, 64, 65, 70, 100)}
    expected[-1] = (70, True)
    assert {n: seen[n] for n in expected} == expected
    assert seen["masks"] == {select.EPOLLOUT}


@linux_full
def test_a_parked_loop_nobody_closes_is_let_go_with_its_registration():
    import gc
    import warnings
    import weakref

    with loopguard.guard(threshold="5s"):
        loop = asyncio.new_event_loop()
        loop.run_until_complete(asyncio.sleep(0))
        assert _native.parked_loops() == 1
        gone = weakref.ref(loop)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)  # "unclosed event loop"
            del loop
            gc.collect()
        assert gone() is None
        assert (_native.registered_loops(), _native.parked_loops()) == (0, 0)


@linux_full
def test_a_parked_proxy_let_go_unregisters_its_loop_and_the_next_run_wraps_anew():
    loop = asyncio.new_event_loop()
    selector = loop._selector
    try:
        with loopguard.guard(threshold="5s"):
            loop.run_until_complete(asyncio.sleep(0))
            proxy = selector._selector
            assert _native.parked_loops() == 1
            # Something puts the epoll object back between two runs: the proxy is freed.
            selector._selector = proxy.inner
            del proxy
            assert (_native.registered_loops(), _native.parked_loops()) == (0, 0)
            loop.run_until_complete(asyncio.sleep(0))
            assert type(selector._selector).__name__ == "EpollProxy"
            assert _native.parked_loops() == 1
            loop.close()
            assert _native.parked_loops() == 0
    finally:
        loop.close()


@linux_full
def test_a_loop_parked_under_one_watchdog_is_watched_anew_under_the_next():
    loop = asyncio.new_event_loop()
    try:
        with loopguard.guard(threshold="5s"):
            loop.run_until_complete(asyncio.sleep(0))
            first = loop._selector._selector
        runtime.shutdown()  # the watchdog stops; the next guard starts another
        with pytest.raises(loopguard.LoopBlockedError) as exc:
            with loopguard.guard(threshold="100ms"):
                loop.run_until_complete(blocks(0.4))
                second = loop._selector._selector
                assert (_native.registered_loops(), _native.parked_loops()) == (0, 1)
    finally:
        loop.close()
    assert second is not first and second.inner is first.inner
    (ev,) = exc.value.events
    assert "first-instant-block" in ev.site.source


def test_a_loop_already_running_is_refused_as_asyncio_refuses_it():
    async def main():
        with pytest.raises(RuntimeError, match="already running"):
            asyncio.get_running_loop().run_forever()
        return _native.registered_loops()

    with loopguard.guard(threshold="5s"):
        assert asyncio.run(main()) == 1
    assert _native.registered_loops() == 0


def test_an_inner_loop_hands_the_thread_back_to_the_outer_one():
    seen = []

    async def inner():
        seen.append(("inner", adapter.thread_slot().id))
        time.sleep(0.4)  # inner-loop-block

    def run_inner():
        # Asyncio refuses a loop inside another's callback unless the outer one is hidden, as
        # libraries that nest loops do.
        outer_loop = asyncio.get_running_loop()
        asyncio.events._set_running_loop(None)
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(inner())
        finally:
            loop.close()
            asyncio.events._set_running_loop(outer_loop)

    async def outer():
        seen.append(("outer", adapter.thread_slot().id))
        # A callback that runs a loop of its own (as a sync library's bridge does).
        await asyncio.get_running_loop().run_in_executor(None, lambda: None)
        run_inner()
        seen.append(("outer again", adapter.thread_slot().id))

    with pytest.raises(loopguard.LoopBlockedError) as exc:
        with loopguard.guard(threshold="100ms"):
            asyncio.run(outer())
    assert [s[0] for s in seen] == ["outer", "inner", "outer again"]
    assert seen[0][1] == seen[2][1] != seen[1][1]
    assert adapter.thread_slot() is None
    assert _native.registered_loops() == 0
    sites = [ev.site.source for ev in exc.value.events]
    assert any("inner-loop-block" in s for s in sites), sites


def test_one_loop_run_from_two_threads_in_turn():
    loop = asyncio.new_event_loop()
    names = []

    async def main():
        names.append(threading.current_thread().name)
        time.sleep(0.4)  # two-threads-block

    def run():
        loop.run_until_complete(main())

    try:
        with pytest.raises(loopguard.LoopBlockedError) as exc:
            with loopguard.guard(threshold="100ms"):
                run()
                t = threading.Thread(target=run, name="second-runner")
                t.start()
                t.join()
    finally:
        loop.close()
    assert names == [threading.current_thread().name, "second-runner"]
    threads = sorted(ev.thread_name for ev in exc.value.events)
    assert threads == sorted(names), threads
    assert _native.registered_loops() == 0


def test_a_loop_run_after_the_runtime_was_released_is_not_watched():
    with loopguard.guard(threshold="100ms"):
        pass
    assert not runtime.active
    seen = []

    async def main():
        seen.append((_native.registered_loops(), type(loop._selector._selector).__name__))
        time.sleep(0.3)  # nobody watches

    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(main())
        assert seen == [(0, type(loop._selector._selector).__name__)]
        assert seen[0][1] != "EpollProxy"
        # And watched again once wanted.
        with pytest.raises(loopguard.LoopBlockedError):
            with loopguard.guard(threshold="100ms"):
                loop.run_until_complete(blocks(0.4))
    finally:
        loop.close()


def test_a_lag_probe_runs_through_the_python_layer():
    loop = asyncio.new_event_loop()
    try:
        with loopguard.guard(threshold="5s"):
            runtime.probe_lag(True)
            try:
                loop.run_until_complete(asyncio.sleep(0.1))
            finally:
                runtime.probe_lag(False)
    finally:
        loop.close()
    assert runtime.lag_log, "the probe measured the loop's lag"
    runtime.lag_log.clear()


@pytest.mark.skipif(not hasattr(sys, "getrefcount"), reason="CPython only")
def test_a_run_keeps_no_reference_to_its_loop():
    loop = asyncio.new_event_loop()
    before = sys.getrefcount(loop)
    with loopguard.guard(threshold="5s"):
        for _ in range(20):
            loop.run_until_complete(asyncio.sleep(0))
    assert sys.getrefcount(loop) == before
    loop.close()


def test_a_subclass_that_overrides_run_forever_reaches_the_patch_through_super():
    calls = []

    class CountingLoop(asyncio.SelectorEventLoop):
        def run_forever(self):
            calls.append(_native.registered_loops())
            return super().run_forever()

    (ev,) = _blocked_run(CountingLoop())
    assert calls == [0]
    assert "first-instant-block" in ev.site.source
