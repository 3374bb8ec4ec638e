"""Raise mode: ``LoopBlockedError`` raised inside the blocked code, at the blocking line."""

import asyncio
import re
import time

import loopguard
import pytest

pytestmark = pytest.mark.interpreter

CPU = """
import asyncio, time
import pytest

def crunch(seconds):
    end = time.thread_time() + seconds  # CPU time: the same work on a busy machine
    x = 0
    # One line: the exception lands on whichever of the loop's instructions runs next.
    while time.thread_time() < end: x += 1  # the hot loop
    return x
"""


def test_command_line_raise_mode_raises_at_the_blocking_line(inner):
    result = inner.run(
        CPU
        + """
@pytest.mark.asyncio
async def test_cpu():
    crunch(2.0)
""",
        "--loopguard-mode=raise",
    )
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    # The test's own traceback ends in the loop, raised by raise mode...
    result.stdout.fnmatch_lines(
        [
            "*while time.thread_time() < end: x += 1  # the hot loop",
            "E*loopguard.LoopBlockedError: loopguard: this code blocked the event loop*",
            f"test_it.py:{inner.line('# the hot loop')}: LoopBlockedError",
        ]
    )
    # ...and the 2 s loop was cut short: the block it made ended well before 2 s.
    blocked_ms = int(re.search(r"event loop blocked for (\d+) ms", out).group(1))
    assert blocked_ms < 1500, blocked_ms
    assert "raised here by raise mode" in out


def test_marker_raise_mode_and_header(inner):
    result = inner.run(
        CPU
        + """
@pytest.mark.asyncio
@pytest.mark.loopguard(mode="raise")
async def test_raises():
    with pytest.raises(Exception) as exc:
        crunch(2.0)
    assert type(exc.value).__name__ == "LoopBlockedError"

@pytest.mark.asyncio
async def test_fails_after():
    crunch(0.3)
"""
    )
    # The first test caught the raised error itself, but its block is still judged.
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(
        [
            "FAILED test_it.py::test_raises - loopguard: * at *",
            "FAILED test_it.py::test_fails_after - loopguard: * at *",
        ]
    )


def test_an_idle_loop_is_never_interrupted(inner):
    result = inner.run(
        """
import asyncio, pytest

@pytest.mark.asyncio
async def test_waits():
    await asyncio.sleep(0.5)
    await asyncio.to_thread(__import__("time").sleep, 0.3)
""",
        "--loopguard-mode=raise",
        inprocess=True,
    )
    result.assert_outcomes(passed=1)


@pytest.mark.parametrize("value", ["explode", "RAISE", ""])
def test_invalid_mode_is_a_usage_error(inner, value):
    result = inner.run("def test_x():\n    pass\n", f"--loopguard-mode={value}", inprocess=True)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            f"*invalid value for --loopguard-mode: '{value}' (from the command line); "
            "expected one of fail, raise*"
        ]
    )


def test_guard_raise_mode_raises_inside_the_block():
    def crunch():
        end = time.perf_counter() + 2.0
        while time.perf_counter() < end:
            pass

    async def main():
        crunch()

    with pytest.raises(loopguard.LoopBlockedError) as exc:
        with loopguard.guard(threshold="100ms", mode="raise"):
            asyncio.run(main())
    assert exc.value.events == []
    # Raised inside the 2 s loop, so it cut the loop short.
    assert exc.traceback[-1].name == "crunch"


def test_guard_rejects_an_unknown_mode():
    with pytest.raises(ValueError, match=r"invalid value for mode: 'loud' \(from loopguard"):
        loopguard.guard(mode="loud")


def test_a_block_that_ended_before_the_raise_is_not_raised_elsewhere(inner):
    # Before it raises, loopguard's assistant names the blocked task by calling a Python
    # function, which can let the GIL go (a thread switch, a read through a file): the loop
    # thread may finish its block meanwhile. An exception sent after that would land in
    # whatever the loop thread ran next (here: the loop's own code, once the sleep is over).
    result = inner.run(
        """
import asyncio, time
import pytest
from loopguard import _chain, _native

@pytest.fixture
def slow_reader():
    def reader(loop, thread_ident):
        time.sleep(0.8)  # lets the GIL go for longer than the block lasts
        return None
    _native.set_task_reader(reader)
    yield
    _chain.install()

@pytest.mark.asyncio
async def test_block_then_wait(slow_reader):
    time.sleep(0.4)  # the block
    await asyncio.sleep(1.5)  # the raise would come meanwhile, landing after it
""",
        "--loopguard-mode=raise",
    )
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    # The block is judged as any other...
    result.stdout.fnmatch_lines(["FAILED test_it.py::test_block_then_wait - loopguard: * at *"])
    # ...and nothing was raised: the block was over.
    assert "LoopBlockedError" not in out, out
