"""End to end: real pytest sessions whose tests really block their event loop."""

from conftest import INI, line

ASYNC_HEADER = """
import asyncio, threading, time
import pytest
"""


def run(pytester, source, *args):
    pytester.makeini(INI)
    pytester.makepyfile(test_it=ASYNC_HEADER + source)
    return pytester.runpytest_subprocess("-p", "loopguard", *args)


def test_sleep_in_async_test_fails_naming_its_line(pytester):
    result = run(
        pytester,
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
            f"*test_it.py:{line(pytester, '# the blocking line')} in test_sleepy",
            "*>*time.sleep(0.3)  # the blocking line",
            "*loop thread 'MainThread'*",
            "FAILED test_it.py::test_sleepy - loopguard: * at *",
        ]
    )


def test_pure_python_loop_fails_naming_a_line_inside_the_loop(pytester):
    result = run(
        pytester,
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
    )
    result.assert_outcomes(failed=1)
    # Any line of the loop body may be the one sampled; all are inside crunch's loop.
    first = line(pytester, "for i in range")
    loop_lines = "|".join(str(n) for n in range(first, first + 4))
    result.stdout.re_match_lines([rf".*test_it\.py:({loop_lines}) in crunch"])


def test_short_blocks_separated_by_awaits_pass(pytester):
    result = run(
        pytester,
        """
@pytest.mark.asyncio
async def test_three_short_blocks():
    for _ in range(3):
        time.sleep(0.02)
        await asyncio.sleep(0)
""",
    )
    result.assert_outcomes(passed=1)


def test_blocking_work_offloaded_to_a_thread_passes(pytester):
    result = run(
        pytester,
        """
@pytest.mark.asyncio
async def test_offloaded():
    await asyncio.to_thread(time.sleep, 0.4)
""",
    )
    result.assert_outcomes(passed=1)


def test_idle_loop_waiting_long_passes(pytester):
    result = run(
        pytester,
        """
@pytest.mark.asyncio
async def test_waits():
    await asyncio.sleep(0.5)
""",
    )
    result.assert_outcomes(passed=1)


def test_asyncio_run_inside_a_sync_test(pytester):
    result = run(
        pytester,
        """
def test_sync():
    async def main():
        time.sleep(0.3)
    asyncio.run(main())
""",
    )
    result.assert_outcomes(failed=1)
    n = line(pytester, "time.sleep")
    result.stdout.fnmatch_lines([f"*test_it.py:{n} in *main"])


def test_loop_in_a_background_thread(pytester):
    result = run(
        pytester,
        """
def test_thread():
    def work():
        async def main():
            await asyncio.sleep(0)
            time.sleep(0.3)
        asyncio.run(main())
    t = threading.Thread(target=work, name="worker-loop")
    t.start()
    t.join()
""",
    )
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            f"*test_it.py:{line(pytester, 'time.sleep')} in *main",
            "*loop thread 'worker-loop'*",
        ]
    )


def test_blocking_async_fixture_is_reported_for_setup(pytester):
    result = run(
        pytester,
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
        ["*ERROR at setup of test_uses_it*", f"*test_it.py:{line(pytester, 'time.sleep')} in slow*"]
    )


def test_several_blocks_in_one_test_are_all_listed(pytester):
    result = run(
        pytester,
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
            f"*test_it.py:{line(pytester, '# first')} in test_twice",
            "*block 2 of 2: event loop blocked for*",
            f"*test_it.py:{line(pytester, '# second')} in test_twice",
        ]
    )


def test_a_test_that_already_failed_gets_the_block_as_a_section(pytester):
    result = run(
        pytester,
        """
@pytest.mark.asyncio
async def test_both():
    time.sleep(0.3)
    assert 1 == 2
""",
    )
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*assert 1 == 2*", "*loopguard: blocked event loop (call)*"])


def test_plugin_frames_are_hidden_from_the_report(pytester):
    result = run(
        pytester,
        """
@pytest.mark.asyncio
async def test_sleepy():
    time.sleep(0.3)
""",
    )
    result.assert_outcomes(failed=1)
    assert "loopguard/_runtime.py" not in result.stdout.str()
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


def test_marker_can_turn_it_off_for_one_test(pytester):
    result = run(
        pytester,
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


def test_anyio_test_on_the_asyncio_backend(pytester):
    result = run(
        pytester,
        """
@pytest.fixture
def anyio_backend():
    return "asyncio"

@pytest.mark.anyio
async def test_anyio():
    time.sleep(0.3)
""",
    )
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([f"*test_it.py:{line(pytester, 'time.sleep')} in test_anyio"])


def test_auto_mode(pytester):
    result = run(
        pytester,
        """
async def test_auto():
    time.sleep(0.3)
""",
        "-o",
        "asyncio_mode=auto",
    )
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([f"*test_it.py:{line(pytester, 'time.sleep')} in test_auto"])
