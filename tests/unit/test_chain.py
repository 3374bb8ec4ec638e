"""The running task's await chain, read from another thread while the loop thread is blocked
(in-process: loopguard's assistant does the same, natively, once per block)."""

import asyncio
import os
import subprocess
import sys
import threading

import pytest
from loopguard import _chain, _native

greenlet = pytest.importorskip("greenlet")

# How a running coroutine's callee is found depends on the interpreter (a native search of its
# frame's memory on 3.10 and 3.11, the collector on 3.12+).
pytestmark = pytest.mark.interpreter


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


# 3.10 and 3.11 find a running coroutine's callee by reading memory, which the portable build
# (macOS, Windows) does not do: their chains end at the outermost running coroutine.
needs_the_callee = pytest.mark.skipif(
    sys.version_info < (3, 12) and _native.portable() is not None,
    reason="the portable build does not find a running coroutine's callee before 3.12",
)


@needs_the_callee
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
@pytest.mark.linux_full
def test_the_memory_reader_checks_its_layout_and_is_on():
    asyncio.run(main([]))
    reader = _chain._running_callee
    assert reader is not None and reader._ready


@pytest.mark.skipif(
    sys.version_info >= (3, 12) or not sys.platform.startswith("linux"),
    reason="the memory reader serves 3.10 and 3.11 on Linux",
)
@pytest.mark.linux_full
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


CHURN = r"""
import asyncio, sys, threading, time
import greenlet
from loopguard import _chain, _native

def work():
    return sum(range(50))

async def bridge():
    return greenlet.greenlet(work).switch()

async def endpoint():
    return await bridge()

async def main():
    loop = asyncio.get_running_loop()
    ident = threading.get_ident()
    stop, reads, chains, odd = [], [0], [0], []

    def reader():
        while not stop:
            got = _chain.describe(loop, ident)
            reads[0] += 1
            if got and got[1]:
                chains[0] += 1
                names = [function for _, _, function in got[1]]
                if names != ["main", "endpoint", "bridge"][: len(names)]:
                    odd.append(names)

    t = threading.Thread(target=reader)
    t.start()
    end = time.monotonic() + float(sys.argv[1])
    while time.monotonic() < end:
        await endpoint()
        # The coroutines just finished are freed; their memory is reused for raw bytes: a
        # stale pointer to one of them now points at 0x41s.
        junk = [bytearray(b"A" * n) for n in range(48, 560, 16)]
        del junk
    stop.append(True)
    t.join()
    print(reads[0], chains[0], odd)

asyncio.run(main())
"""


def test_chains_read_while_coroutines_come_and_go_never_use_a_freed_one(tmp_path):
    # Another thread reads the chain over and over while the loop thread runs coroutines
    # through a greenlet and frees them at once, reusing their memory. A chain's reader that
    # checked a coroutine in memory, let the GIL go (a read through a file, a thread switch)
    # and then used it crashed this process within seconds.
    script = tmp_path / "churn.py"
    script.write_text(CHURN)
    done = subprocess.run(
        [sys.executable, "-X", "faulthandler", str(script), "4"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    reads, chains, odd = done.stdout.split(" ", 2)
    assert int(reads) > 0 and int(chains) > 0, done.stdout  # chains were read meanwhile
    assert odd.strip() == "[]", odd
