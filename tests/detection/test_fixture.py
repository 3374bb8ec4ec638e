"""The ``loopguard`` fixture: the test's blocks and ``expect_block()``."""

import pytest

pytestmark = pytest.mark.single_version

HEADER = """
import asyncio, time
import pytest
"""


INNER = dict(header=HEADER)


def test_expect_block_passes_when_the_loop_blocks_inside_it(pytester, inner):
    result = inner.run(
        """
@pytest.mark.asyncio
async def test_known_bug(loopguard):
    await asyncio.sleep(0)
    with loopguard.expect_block():
        time.sleep(0.3)
""",
        "--loopguard-json=r.json",
    )
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*1 block at 1 call site in 1 test, * 1 allowed"])
    assert (
        '"reason": "expected by loopguard.expect_block()"' in (pytester.path / "r.json").read_text()
    )


def test_expect_block_fails_when_the_loop_does_not_block(inner):
    result = inner.run(
        """
@pytest.mark.asyncio
async def test_fixed(loopguard):
    async with loopguard.expect_block("50ms"):
        await asyncio.sleep(0.2)
""",
    )
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*loopguard: expected the event loop to block for at least 50 ms inside "
            "expect_block() (test_it.py::test_fixed), but it did not"
        ]
    )


def test_a_phase_failed_by_expect_block_is_reported_as_if_it_had_raised(pytester, inner):
    # The failure is the phase's own, as a failure raised in it is: an xfail test that fails
    # it is xfailed, a fixture's expect_block() fails the setup (an error), and JUnit XML
    # and the short summary carry its message.
    result = inner.run(
        """
@pytest.fixture
def expecting(loopguard):
    with loopguard.expect_block("50ms"):
        pass
    yield

@pytest.mark.asyncio
@pytest.mark.xfail(reason="known")
async def test_xfailed(loopguard):
    with loopguard.expect_block("50ms"):
        await asyncio.sleep(0)

def test_in_setup(expecting):
    pass

@pytest.mark.asyncio
async def test_failed(loopguard):
    with loopguard.expect_block("50ms"):
        await asyncio.sleep(0)
""",
        "--junitxml=j.xml",
        "-rA",
    )
    result.assert_outcomes(xfailed=1, errors=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "XFAIL test_it.py::test_xfailed - known",
            "ERROR test_it.py::test_in_setup - Failed: loopguard: expected the event loop *",
            "FAILED test_it.py::test_failed - Failed: loopguard: expected the event loop *",
        ]
    )
    junit = (pytester.path / "j.xml").read_text()
    message = "Failed: loopguard: expected the event loop to block for at least 50 ms"
    assert f'message="failed on setup with &quot;{message}' in junit, junit
    assert f'message="{message}' in junit, junit


def test_expect_block_below_the_threshold(inner):
    result = inner.run(
        """
@pytest.mark.asyncio
async def test_small_block(loopguard):
    with loopguard.expect_block(threshold="30ms"):
        time.sleep(0.08)
    await asyncio.sleep(0)
    assert len(loopguard.events) == 1
""",
    )
    result.assert_outcomes(passed=1)


def test_a_block_outside_expect_block_still_fails(inner):
    result = inner.run(
        """
@pytest.mark.asyncio
async def test_two(loopguard):
    with loopguard.expect_block():
        time.sleep(0.3)
    await asyncio.sleep(0)
    time.sleep(0.3)  # unexpected
""",
    )
    inner.assert_blocked_at(result, "# unexpected", "test_two")


def test_events_lists_the_blocks_so_far(inner):
    result = inner.run(
        """
@pytest.mark.asyncio
@pytest.mark.loopguard(mode="record")
async def test_events(loopguard):
    assert loopguard.events == []
    time.sleep(0.3)
    await asyncio.sleep(0.01)
    (ev,) = loopguard.events
    assert ev.duration >= 0.28
    assert ev.site.function == "test_events"
    assert loopguard.threshold == pytest.approx(0.1)
""",
    )
    result.assert_outcomes(passed=1)


def test_lag_statistics(inner):
    result = inner.run(
        """
@pytest.mark.asyncio
async def test_lag(loopguard):
    await asyncio.sleep(0.1)
    time.sleep(0.06)  # under the threshold, but the loop lags
    await asyncio.sleep(0.05)
    lag = loopguard.lag
    assert lag.samples >= 5
    assert lag.max >= 0.04
    assert lag.p50 <= lag.p99 <= lag.max
    assert "p99" in str(lag)
""",
    )
    result.assert_outcomes(passed=1)


def test_max_lag_fails_a_test_whose_loop_lags(inner):
    result = inner.run(
        """
@pytest.mark.asyncio
@pytest.mark.loopguard(threshold="1s", max_lag="100ms")
async def test_slow_handler():
    await asyncio.sleep(0.05)
    time.sleep(0.3)
    await asyncio.sleep(0.05)

@pytest.mark.asyncio
@pytest.mark.loopguard(max_lag="500ms")
async def test_responsive():
    for _ in range(10):
        await asyncio.sleep(0.01)
""",
    )
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            # (The lag is up to one 10 ms probe interval shorter than the block.)
            "*loopguard: event loop lag * ms exceeded max_lag 100 ms (from "
            "@pytest.mark.loopguard on test_it.py::test_slow_handler); lag max * ms, p50 *",
            "FAILED test_it.py::test_slow_handler*",
        ]
    )


def test_invalid_max_lag_is_a_usage_error(inner):
    result = inner.run(
        """
@pytest.mark.loopguard(max_lag="soon")
def test_marked():
    pass
""",
        inprocess=True,
    )
    assert result.ret != 0
    result.stderr.fnmatch_lines(
        [
            "*invalid value for max_lag: 'soon' (from @pytest.mark.loopguard on "
            "test_it.py::test_marked); expected a positive duration*"
        ]
    )
