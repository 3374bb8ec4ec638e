"""uvloop loops, however they are made, are watched (by a periodic beat: see _uvloop.py)."""

import sys

import pytest
from conftest import INI, line

pytest.importorskip("uvloop")

HEADER = """
import asyncio, time
import pytest, uvloop

async def blocker():
    await asyncio.sleep(0.01)
    time.sleep(0.4)  # the blocking line
"""


def run(pytester, source, *args):
    pytester.makeini(INI)
    pytester.makepyfile(test_it=HEADER + source)
    return pytester.runpytest_subprocess("-p", "loopguard", *args)


def assert_reported(result, pytester, test):
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*loopguard: event loop blocked for [34]?? ms (threshold 100 ms)*",
            f"*test_it.py:{line(pytester, '# the blocking line')} in blocker",
            "*>*time.sleep(0.4)  # the blocking line",
            "*loop thread 'MainThread', uvloop loop*",
            f"FAILED test_it.py::{test} - loopguard: * at *",
        ]
    )
    # uvloop calls back from C: the stack is cut at loopguard's wrapper of the loop's run,
    # so neither pytest's frames nor loopguard's own are shown.
    report = result.stdout.str().split("Python stack of the loop thread")[1]
    report = report.split("loop thread 'MainThread'")[0]
    assert "_pytest" not in report and "pluggy" not in report and "loopguard" not in report


@pytest.mark.parametrize(
    "call",
    [
        "uvloop.run(blocker())",
        "loop = uvloop.new_event_loop(); loop.run_until_complete(blocker()); loop.close()",
        "with asyncio.Runner(loop_factory=uvloop.new_event_loop) as r: r.run(blocker())",
        "asyncio.set_event_loop_policy(uvloop.EventLoopPolicy()); asyncio.run(blocker()); "
        "asyncio.set_event_loop_policy(None)",
    ],
    ids=["uvloop.run", "new_event_loop", "Runner", "policy"],
)
def test_uvloop_loop_in_a_sync_test(pytester, call):
    result = run(pytester, f"\ndef test_sync():\n    {call}\n")
    assert_reported(result, pytester, "test_sync")


def test_pytest_asyncio_with_the_uvloop_policy(pytester):
    result = run(
        pytester,
        """
@pytest.fixture(scope="session")
def event_loop_policy():
    return uvloop.EventLoopPolicy()

@pytest.mark.asyncio
async def test_on_uvloop():
    assert type(asyncio.get_running_loop()).__module__.startswith("uvloop")
    await blocker()
""",
        "-W",
        "ignore::DeprecationWarning",
    )
    assert_reported(result, pytester, "test_on_uvloop")


def test_anyio_with_use_uvloop(pytester):
    result = run(
        pytester,
        """
@pytest.fixture
def anyio_backend():
    return ("asyncio", {"use_uvloop": True})

@pytest.mark.anyio
async def test_anyio_uvloop():
    await blocker()
""",
    )
    assert_reported(result, pytester, "test_anyio_uvloop")


def test_idle_and_briefly_busy_uvloop_loops_pass(pytester):
    result = run(
        pytester,
        """
async def fine():
    await asyncio.sleep(0.5)  # idle for longer than the threshold
    for _ in range(5):
        time.sleep(0.03)  # short blocks
        await asyncio.sleep(0)
    await asyncio.to_thread(time.sleep, 0.3)  # offloaded

def test_fine():
    uvloop.run(fine())
""",
    )
    result.assert_outcomes(passed=1)


def test_beat_is_cancelled_when_the_loop_stops(pytester):
    # The loop is run several times and stays open in between: no beat runs while it is
    # stopped (no stray callbacks, no events attributed to later tests).
    result = run(
        pytester,
        """
loop = uvloop.new_event_loop()

def test_first():
    loop.run_until_complete(asyncio.sleep(0.05))
    time.sleep(0.3)  # not inside the loop: not a block

def test_second():
    loop.run_until_complete(asyncio.sleep(0.05))

def test_third():
    loop.run_until_complete(blocker())
""",
    )
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["FAILED test_it.py::test_third - loopguard*"])


def test_uvloop_and_trio_imported_inside_a_guard_are_watched(pytester):
    pytest.importorskip("trio")
    script = pytester.makepyfile(
        late="""
import asyncio, sys, time, loopguard
assert "uvloop" not in sys.modules and "trio" not in sys.modules

async def a():
    await asyncio.sleep(0.01)
    time.sleep(0.4)  # uvloop blocking line

async def t():
    import trio
    await trio.sleep(0.01)
    time.sleep(0.4)  # trio blocking line

for kind in ("uvloop", "trio"):
    try:
        with loopguard.guard(threshold="100ms"):
            if kind == "uvloop":
                import uvloop
                uvloop.run(a())
            else:
                import trio
                trio.run(t)
        print(kind, "not reported")
    except loopguard.LoopBlockedError as e:
        print(kind, "reported", e.events[0].loop_kind, e.events[0].site)
"""
    )
    result = pytester.run(sys.executable, str(script))
    uv = line(pytester, "# uvloop blocking line", "late.py")
    tr = line(pytester, "# trio blocking line", "late.py")
    result.stdout.fnmatch_lines(
        [f"uvloop reported uvloop late.py:{uv} in a", f"trio reported trio late.py:{tr} in t"]
    )
