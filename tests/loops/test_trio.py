"""trio runs are watched through trio's instrument hooks: what is particular to trio (the cases
every kind of loop shares are in test_loop_kinds.py)."""

import pytest

pytestmark = pytest.mark.single_version

pytest.importorskip("trio")

HEADER = """
import time
import pytest, trio

async def blocker():
    await trio.sleep(0.01)
    time.sleep(0.4)  # the blocking line
"""


INNER = dict(header=HEADER, plugins=("trio",))


def assert_reported(result, inner, test):
    inner.assert_blocked_at(result, "# the blocking line", "blocker")
    result.stdout.fnmatch_lines(
        [
            "*loopguard: event loop blocked for [34]?? ms (threshold 100 ms)*",
            inner.site("# the blocking line", "blocker"),
            "*>*time.sleep(0.4)  # the blocking line",
            "*loop thread 'MainThread', trio run*",
            f"FAILED test_it.py::{test} - loopguard: * at *",
        ]
    )


def test_report_starts_at_the_trio_task(inner):
    pytest.importorskip("pytest_trio")
    result = inner.run(
        """
@pytest.mark.trio
async def test_trio():
    await blocker()
""",
    )
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*outer frames (test runner and event loop) not shown*"])
    result.stdout.no_fnmatch_line("*unrolled_run*")


def test_user_instruments_and_clock_are_kept(inner):
    result = inner.run(
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
    assert_reported(result, inner, "test_with_clock")


def test_raise_mode_raises_in_the_blocked_trio_task(inner):
    pytest.importorskip("pytest_trio")
    result = inner.run(
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
    spin = inner.line("# spinning line")
    result.stdout.re_match_lines(
        [
            rf".*File \".*test_it\.py\", line ({spin - 1}|{spin}), in test_spins",
            r".*loopguard\.LoopBlockedError: loopguard: this code blocked the event loop.*",
        ]
    )
    result.stdout.fnmatch_lines(["FAILED test_it.py::test_spins - LoopBlockedError*"])


def test_trio_imported_past_the_import_hook_is_watched_from_the_next_test(inner):
    # The first test imports trio with loopguard's import hook out of the way (as a finder put
    # ahead of it might): the next test's start sees trio imported and instruments it. (Without
    # pytest-trio, which would import trio before the session starts.)
    result = inner.using(header="", plugins=()).run(
        """
import sys, time
from loopguard._imports import PostImportFinder

def test_import_past_the_hook():
    hooks = [f for f in sys.meta_path if isinstance(f, PostImportFinder)]
    for f in hooks:
        sys.meta_path.remove(f)
    try:
        import trio
    finally:
        sys.meta_path[0:0] = hooks

def test_runs_trio():
    import trio

    async def main():
        await trio.sleep(0.01)
        time.sleep(0.4)  # the blocking line

    trio.run(main)
""",
    )
    inner.assert_blocked_at(
        result, "# the blocking line", "test_runs_trio.<locals>.main", failed=1, passed=1
    )
