"""Which loop runs the code, as the runtime finds it by asking each kind of loop's adapter in turn
(what ``guard()`` and ``offload_check()`` attach to). In-process: no watchdog needed."""

import asyncio

import pytest
from loopguard._runtime import runtime


def kind_here():
    found = runtime._running_loop()
    return None if found is None else found[0].kind


async def async_kind_here():
    return kind_here()


def test_every_kind_has_an_adapter_once_its_library_is_imported():
    pytest.importorskip("uvloop")
    pytest.importorskip("trio")
    assert kind_here() is None  # asking loads the adapters of the libraries imported since
    assert [a.kind for a in runtime._adapters] == ["uvloop", "asyncio", "trio"]


def test_no_loop_runs_plain_code():
    assert kind_here() is None


def test_asyncio():
    assert asyncio.run(async_kind_here()) == "asyncio"


def test_uvloop():
    uvloop = pytest.importorskip("uvloop")
    assert uvloop.run(async_kind_here()) == "uvloop"


def test_trio():
    trio = pytest.importorskip("trio")
    assert trio.run(async_kind_here) == "trio"


def test_a_trio_guest_run_belongs_to_its_asyncio_host():
    trio = pytest.importorskip("trio")

    async def host():
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        trio.lowlevel.start_guest_run(
            async_kind_here,
            run_sync_soon_threadsafe=loop.call_soon_threadsafe,
            done_callback=done.set_result,
        )
        return (await done).unwrap()

    assert asyncio.run(host()) == "asyncio"


def test_two_loops_have_two_keys_and_one_loop_one():
    def key_here():
        return runtime._running_loop()[1]

    async def twice():
        return key_here(), key_here()

    loops = [asyncio.new_event_loop(), asyncio.new_event_loop()]  # both alive: distinct ids
    try:
        first, second = (loop.run_until_complete(twice()) for loop in loops)
    finally:
        for loop in loops:
            loop.close()
    assert first[0] == first[1]
    assert second[0] == second[1]
    assert first[0] != second[0]
