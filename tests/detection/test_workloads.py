"""Each kind of block is caught at its line, with the stack read while the loop was blocked.

The GIL-free reader must capture the stack within the threshold + 50 ms even when C code holds
the GIL (regex, sorted, sum, json.dumps): a reader that takes the GIL would only get it after
the block. Runs in-process with ``loopguard.guard()``; every CPython 3.9-3.13.
"""

import asyncio
import ctypes
import hashlib
import json
import re
import threading
import time

import loopguard
import pytest
from loopguard import _native

# What these assert (a stack read while C code holds the GIL, who holds it) is the GIL-free
# reader's and the GIL reader's: Linux only.
pytestmark = [pytest.mark.interpreter, pytest.mark.linux_full]

THRESHOLD = 0.1
MARGIN = 0.05


def _line(marker):
    with open(__file__) as f:
        return next(i for i, text in enumerate(f, 1) if marker in text and "_line(" not in text)


def _run(work):
    async def main():
        await asyncio.sleep(0)
        work()
        await asyncio.sleep(0)

    with pytest.raises(loopguard.LoopBlockedError) as exc:
        with loopguard.guard(threshold=THRESHOLD):
            asyncio.run(main())
    return max(exc.value.events, key=lambda e: e.duration)


def regex():
    re.match(r"(a+)+$", "a" * 24 + "b")  # WORK-regex


FLOATS = None


def sort():
    sorted(FLOATS)  # WORK-sorted


def sum_range():
    sum(range(30_000_000))  # WORK-sum


PAYLOAD = None


def dumps():
    json.dumps(PAYLOAD)  # WORK-json


def python_loop():
    end = time.thread_time() + 0.4  # CPU time: the same work on a busy machine
    while time.thread_time() < end:  # WORK-loop
        pass  # WORK-loop


def sleep():
    time.sleep(0.3)  # WORK-sleep


@pytest.fixture(scope="module", autouse=True)
def data():
    global FLOATS, PAYLOAD
    FLOATS = [float((i * 7919) % 1_000_003) for i in range(3_000_000)]
    PAYLOAD = [{"id": i, "name": "x" * 16, "tags": [1, 2, 3]} for i in range(600_000)]
    yield
    FLOATS = PAYLOAD = None


def test_the_gil_free_reader_is_in_use():
    with loopguard.guard():
        assert _native.sampler_name() == "native"


@pytest.mark.parametrize(
    ("work", "marker", "gil"),
    [
        (regex, "WORK-regex", {"loop"}),
        (sort, "WORK-sorted", {"loop"}),
        (sum_range, "WORK-sum", {"loop"}),
        (dumps, "WORK-json", {"loop"}),
        (python_loop, "WORK-loop", {"loop"}),
        (sleep, "WORK-sleep", {"released"}),
    ],
    ids=["regex", "sorted", "sum-range", "json-dumps", "python-loop", "time-sleep"],
)
def test_workload_is_caught_at_its_line_while_blocked(work, marker, gil):
    ev = _run(work)
    if ev.captured_after is not None and ev.captured_after > THRESHOLD + MARGIN:
        # One retry: on a shared 2-core machine the watchdog's wake-up itself can be late.
        ev = _run(work)
    lines = {i for i, text in enumerate(open(__file__), 1) if marker in text}
    assert ev.site is not None, ev
    assert ev.site.filename == __file__
    assert ev.site.lineno in lines, (ev.site, lines)
    assert ev.site.function == work.__name__
    assert ev.gil in gil
    assert not ev.late
    assert ev.captured_after is not None
    assert THRESHOLD <= ev.captured_after <= THRESHOLD + MARGIN, ev.captured_after
    assert ev.duration >= ev.captured_after


def test_starvation_by_a_worker_holding_the_gil_names_the_worker():
    async def main():
        await asyncio.to_thread(sorted, FLOATS)

    with pytest.raises(loopguard.LoopBlockedError) as exc:
        with loopguard.guard(threshold=THRESHOLD):
            asyncio.run(main())
    starved = [e for e in exc.value.events if e.starved]
    assert starved, exc.value.events
    ev = max(starved, key=lambda e: e.duration)
    assert ev.gil == "other"
    assert ev.gil_holder_thread is not None
    assert ev.gil_holder_thread.startswith("asyncio_")
    assert ev.gil_holder_stack, ev
    assert "starved of the GIL" in str(exc.value)


# ctypes.PyDLL calls C functions without releasing the GIL: usleep through it is a C call that
# holds the GIL for a known time, in a system call (like a driver that forgot to release it).
_LIBC = ctypes.PyDLL(None)
_SLEEPS = {"clock_nanosleep", "nanosleep", "select", "pselect6"}


def hold_the_gil(seconds):
    _LIBC.usleep(int(seconds * 1e6))  # WORK-hold


def test_loop_in_its_own_blocking_call_is_not_starvation_while_another_thread_holds_the_gil():
    # The loop thread sleeps 1.5 s; for 1 s of it another thread holds the GIL. The GIL alone
    # would say "starved by that thread"; the kernel says the loop thread was in its own sleep.
    def hog():
        time.sleep(0.2)
        hold_the_gil(1.0)

    def work():
        threading.Thread(target=hog, name="gil-hog").start()
        time.sleep(1.5)  # WORK-own-sleep

    ev = _run(work)
    assert ev.site is not None and ev.site.lineno == _line("# WORK-own-sleep"), ev
    assert not ev.starved
    assert ev.gil == "released"
    assert ev.gil_holder_thread is None
    assert ev.syscall in _SLEEPS, ev.syscall
    [block] = [line for line in str(_format(ev)).splitlines() if "GIL released" in line]
    assert f"GIL released, in the system call {ev.syscall}" in block


def test_c_call_blocking_in_the_kernel_with_the_gil_is_named():
    ev = _run(lambda: hold_the_gil(0.4))
    assert ev.site is not None and ev.site.lineno == _line("# WORK-hold"), ev
    assert ev.gil == "loop"
    assert ev.syscall in _SLEEPS, ev.syscall
    assert f"GIL held by the loop thread, in the system call {ev.syscall}" in _format(ev)


def test_starvation_by_a_c_call_holding_the_gil_is_still_starvation():
    # The loop thread waits for the GIL on the GIL's own futex: that stays starvation.
    async def main():
        await asyncio.to_thread(hold_the_gil, 0.6)

    with pytest.raises(loopguard.LoopBlockedError) as exc:
        with loopguard.guard(threshold=THRESHOLD):
            asyncio.run(main())
    ev = max(exc.value.events, key=lambda e: e.duration)
    assert ev.starved, ev
    assert ev.gil == "other"
    assert ev.gil_holder_thread is not None and ev.gil_holder_thread.startswith("asyncio_")
    assert ev.site is not None and ev.site.lineno == _line("# WORK-hold"), ev


def test_c_code_running_without_the_gil_is_named():
    # hashlib releases the GIL while it hashes a large buffer: the loop thread is on a CPU,
    # in no system call.
    data = b"x" * 400_000_000

    def work():
        hashlib.sha256(data).digest()  # WORK-hash

    ev = _run(work)
    assert ev.site is not None and ev.site.lineno == _line("# WORK-hash"), ev
    assert ev.gil == "released"
    assert ev.running and ev.syscall is None
    assert "GIL released, running C code that released it" in _format(ev)


def _format(ev):
    from loopguard._failure import format_event

    return "\n".join(format_event(ev))
