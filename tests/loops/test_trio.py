"""trio runs (pytest-trio, trio.run, anyio.run) are watched through trio's instrument hooks."""

import pytest
from conftest import INI, line

pytest.importorskip("trio")

HEADER = """
import time
import pytest, trio

async def blocker():
    await trio.sleep(0.01)
    time.sleep(0.4)  # the blocking line
"""


def run(pytester, source, *args, ini=INI):
    pytester.makeini(ini)
    pytester.makepyfile(test_it=HEADER + source)
    return pytester.runpytest_subprocess("-p", "loopguard", *args)


def assert_reported(result, pytester, test, **outcomes):
    result.assert_outcomes(**(outcomes or {"failed": 1}))
    result.stdout.fnmatch_lines(
        [
            "*loopguard: event loop blocked for [34]?? ms (threshold 100 ms)*",
            f"*test_it.py:{line(pytester, '# the blocking line')} in blocker",
            "*>*time.sleep(0.4)  # the blocking line",
            "*loop thread 'MainThread', trio run*",
            f"FAILED test_it.py::{test} - loopguard: * at *",
        ]
    )


def test_report_starts_at_the_trio_task(pytester):
    pytest.importorskip("pytest_trio")
    result = run(
        pytester,
        """
@pytest.mark.trio
async def test_trio():
    await blocker()
""",
    )
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*outer frames (test runner and event loop) not shown*"])
    result.stdout.no_fnmatch_line("*unrolled_run*")


def test_pytest_trio_marked_test(pytester):
    pytest.importorskip("pytest_trio")
    result = run(
        pytester,
        """
@pytest.mark.trio
async def test_trio():
    await blocker()
""",
    )
    assert_reported(result, pytester, "test_trio")


def test_pytest_trio_mode(pytester):
    pytest.importorskip("pytest_trio")
    result = run(
        pytester,
        """
async def test_auto():
    await blocker()

async def test_fine():
    await trio.sleep(0.3)
""",
        ini=INI + "trio_mode = true\n",
    )
    assert_reported(result, pytester, "test_auto", failed=1, passed=1)


@pytest.mark.parametrize(
    "call", ["trio.run(blocker)", "import anyio; anyio.run(blocker, backend='trio')"]
)
def test_trio_run_in_a_sync_test(pytester, call):
    result = run(pytester, f"\ndef test_sync():\n    {call}\n")
    assert_reported(result, pytester, "test_sync")


def test_idle_short_and_offloaded_work_passes(pytester):
    result = run(
        pytester,
        """
async def fine():
    await trio.sleep(0.4)  # idle for longer than the threshold
    for _ in range(5):
        time.sleep(0.03)  # short blocks
        await trio.sleep(0)
    await trio.to_thread.run_sync(time.sleep, 0.3)  # offloaded
    with trio.move_on_after(0.3):
        await trio.sleep_forever()  # waiting with no deadline of its own

def test_fine():
    trio.run(fine)
""",
    )
    result.assert_outcomes(passed=1)


def test_user_instruments_and_clock_are_kept(pytester):
    result = run(
        pytester,
        """
from trio.testing import MockClock

class Counter(trio.abc.Instrument):
    steps = 0
    def before_task_step(self, task):
        Counter.steps += 1

async def main():
    await trio.sleep(3600)  # the autojump clock skips this
    await blocker()

def test_with_clock():
    clock = MockClock(autojump_threshold=0)
    trio.run(main, clock=clock, instruments=[Counter()])
    assert Counter.steps > 0
""",
    )
    assert_reported(result, pytester, "test_with_clock")


def test_trio_in_a_background_thread(pytester):
    result = run(
        pytester,
        """
import threading

def test_thread():
    t = threading.Thread(target=trio.run, args=(blocker,), name="trio-worker")
    t.start()
    t.join()
""",
    )
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            f"*test_it.py:{line(pytester, '# the blocking line')} in blocker",
            "*loop thread 'trio-worker', trio run*",
        ]
    )


def test_raise_mode_raises_in_the_blocked_trio_task(pytester):
    pytest.importorskip("pytest_trio")
    result = run(
        pytester,
        """
@pytest.mark.trio
async def test_spins():
    await trio.sleep(0.01)
    deadline = time.thread_time() + 2.0
    while time.thread_time() < deadline:
        pass  # spinning line
""",
        "--loopguard-mode=raise",
    )
    result.assert_outcomes(failed=1)
    # Raised in the task (trio wraps it in the nursery's ExceptionGroup), at the spinning loop.
    spin = line(pytester, "# spinning line")
    result.stdout.re_match_lines(
        [
            rf".*File \".*test_it\.py\", line ({spin - 1}|{spin}), in test_spins",
            r".*loopguard\.LoopBlockedError: loopguard: this code blocked the event loop.*",
        ]
    )
    result.stdout.fnmatch_lines(["FAILED test_it.py::test_spins - LoopBlockedError*"])
