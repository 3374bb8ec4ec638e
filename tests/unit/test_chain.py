"""The running task's await chain, read from another thread while the loop thread is blocked
(in-process: loopguard's assistant does the same, natively, once per block)."""

import asyncio
import os
import sys
import threading

import pytest
from loopguard import _chain

greenlet = pytest.importorskip("greenlet")


def line_of(marker):
    source = open(__file__).read().splitlines()
    return next(i for i, text in enumerate(source, 1) if marker in text)


def read_from_another_thread():
    """What another thread's describe() sees while the calling (loop) thread waits for it."""
    loop = asyncio.get_running_loop()
    ident = threading.get_ident()
    seen = []
    reader = threading.Thread(target=lambda: seen.append(_chain.describe(loop, ident)))
    reader.start()
    reader.join()  # the loop thread is blocked here while it reads
    return seen[0]


def on_its_own_stack(seen):
    seen.append(read_from_another_thread())


async def bridge(seen):
    # Runs the sync function on a greenlet's stack, as SQLAlchemy's greenlet_spawn does.
    return greenlet.greenlet(on_its_own_stack).switch(seen)  # the bridge


async def endpoint(seen):
    await bridge(seen)  # the endpoint awaits


async def main(seen):
    await endpoint(seen)  # the task's coroutine awaits


def test_a_greenlet_block_gets_the_chain_of_coroutines_that_awaited_it():
    seen = []
    asyncio.run(main(seen))
    name, chain = seen[0]
    assert name.startswith("Task-")
    here = __file__
    assert chain == [
        (here, line_of("the task's coroutine awaits"), "main"),
        (here, line_of("the endpoint awaits"), "endpoint"),
        (here, line_of("# the bridge"), "bridge"),
    ]


async def plain(seen):
    seen.append(read_from_another_thread())  # on the task's own stack


def test_a_stack_that_reaches_the_task_needs_no_chain():
    seen = []
    asyncio.run(plain(seen))
    name, chain = seen[0]
    assert name.startswith("Task-") and chain == []


def test_no_task_no_description():
    loop = asyncio.new_event_loop()
    try:
        seen = []
        loop.call_soon(lambda: seen.append(_chain.describe(loop, threading.get_ident())))
        loop.call_soon(loop.stop)
        loop.run_forever()
    finally:
        loop.close()
    assert seen == [None]


@pytest.mark.skipif(
    sys.version_info >= (3, 12) or not sys.platform.startswith("linux"),
    reason="the memory reader serves 3.10 and 3.11 on Linux",
)
def test_the_memory_reader_checks_its_layout_and_is_on():
    asyncio.run(main([]))
    reader = _chain._running_callee
    assert reader is not None and reader._ready


@pytest.mark.skipif(
    sys.version_info >= (3, 12) or not sys.platform.startswith("linux"),
    reason="the memory reader serves 3.10 and 3.11 on Linux",
)
def test_a_forked_child_reads_its_own_memory():
    asyncio.run(main([]))  # the parent's reader is open
    pid = os.fork()
    if pid == 0:  # the child: the chain is read from its own memory
        seen, ok = [], False
        try:
            asyncio.run(main(seen))
            ok = [f for _, _, f in seen[0][1]] == ["main", "endpoint", "bridge"]
        finally:
            os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
