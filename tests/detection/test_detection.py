"""End to end: real pytest sessions whose tests really block their event loop (on asyncio; what
every kind of loop does alike is in ../loops/test_loop_kinds.py)."""

import pytest

pytestmark = pytest.mark.interpreter

ASYNC_HEADER = """
import asyncio, threading, time
import pytest
"""


INNER = dict(header=ASYNC_HEADER)


def test_sleep_in_async_test_fails_naming_its_line(inner):
    result = inner.run(
        """
@pytest.mark.asyncio
async def test_sleepy():
    await asyncio.sleep(0)
    time.sleep(0.3)  # the blocking line
""",
    )
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*loopguard: event loop blocked for 3?? ms (threshold 100 ms)*",
            inner.site("# the blocking line", "test_sleepy"),
            "*>*time.sleep(0.3)  # the blocking line",
            "*loop thread 'MainThread'*",
            "FAILED test_it.py::test_sleepy - loopguard: * at *",
        ]
    )


# The GIL-taking sampler (the portable build's) finds the loop where it lets the sampler have
# the GIL: on 3.10 and 3.11 mostly the jump back to the loop's start, which has no line.
@pytest.mark.parametrize("sampler", ["auto", "gil"])
def test_pure_python_loop_fails_naming_a_line_inside_the_loop(inner, sampler):
    result = inner.run(
        """
def crunch():
    total = 0
    for i in range(100_000_000):
        total += i * i  # hot line
        if i % 1000 == 0 and time.thread_time() > deadline[0]:
            break
    return total

deadline = [0.0]

@pytest.mark.asyncio
async def test_cpu():
    deadline[0] = time.thread_time() + 0.4  # CPU time: the same work on a busy machine
    crunch()
""",
        f"--loopguard-sampler={sampler}",
    )
    result.assert_outcomes(failed=1)
    # Any line of the loop body may be the one sampled; all are inside crunch's loop.
    first = inner.line("for i in range")
    loop_lines = "|".join(str(n) for n in range(first, first + 4))
    result.stdout.re_match_lines([rf".*test_it\.py:({loop_lines}) in crunch"])


def test_blocking_async_fixture_is_reported_for_setup(inner):
    result = inner.run(
        """
import pytest_asyncio

@pytest_asyncio.fixture
async def slow_resource():
    time.sleep(0.3)
    yield 1

@pytest.mark.asyncio
async def test_uses_it(slow_resource):
    assert slow_resource == 1
""",
    )
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        ["*ERROR at setup of test_uses_it*", inner.site("time.sleep", "slow*")]
    )


def test_several_blocks_in_one_test_are_all_listed(inner):
    result = inner.run(
        """
@pytest.mark.asyncio
async def test_twice():
    time.sleep(0.25)  # first
    await asyncio.sleep(0)
    time.sleep(0.25)  # second
""",
    )
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*block 1 of 2: event loop blocked for*",
            inner.site("# first", "test_twice"),
            "*block 2 of 2: event loop blocked for*",
            inner.site("# second", "test_twice"),
        ]
    )


def test_a_test_that_already_failed_gets_the_block_as_a_section(inner):
    result = inner.run(
        """
@pytest.mark.asyncio
async def test_both():
    time.sleep(0.3)
    assert 1 == 2
""",
    )
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*assert 1 == 2*", "*loopguard: blocked event loop (call)*"])


def test_plugin_frames_are_hidden_from_the_report(inner):
    result = inner.run(
        """
@pytest.mark.asyncio
async def test_sleepy():
    time.sleep(0.3)
""",
    )
    result.assert_outcomes(failed=1)
    assert "loopguard/_runtime.py" not in result.stdout.str()
    assert "loopguard/_asyncio.py" not in result.stdout.str()
    assert "loopguard/plugin.py" not in result.stdout.str()


def test_without_the_plugin_nothing_is_checked(pytester):
    pytester.makepyfile(
        test_it=ASYNC_HEADER
        + """
@pytest.mark.asyncio
async def test_sleepy():
    time.sleep(0.3)
"""
    )
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(passed=1)
    result = pytester.runpytest_subprocess("-p", "loopguard", "-p", "no:loopguard")
    result.assert_outcomes(passed=1)


def test_marker_can_turn_it_off_for_one_test(inner):
    result = inner.run(
        """
@pytest.mark.asyncio
@pytest.mark.loopguard(enabled=False)
async def test_allowed():
    time.sleep(0.3)

@pytest.mark.asyncio
async def test_checked():
    time.sleep(0.3)
""",
    )
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["FAILED test_it.py::test_checked*"])
