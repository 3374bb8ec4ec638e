"""A test paused in a debugger is not blocking its loop; a test under a mere tracer is."""

import sys

import pytest

pytestmark = pytest.mark.single_version

SOURCE = """
import asyncio, sys, time
import pytest

@pytest.mark.asyncio
async def test_paused():
    await asyncio.sleep(0)
    breakpoint()
    x = 1  # the user looks around for a while here

@pytest.mark.asyncio
async def test_traced():
    def tracer(frame, event, arg):  # like coverage's Python tracer: traces, never pauses
        return tracer
    sys.settrace(tracer)
    try:
        time.sleep(0.4)  # the blocking line
    finally:
        sys.settrace(None)
"""


def test_breakpoint_pause_is_not_a_block_but_a_tracer_does_not_hide_blocks(pytester, inner):
    inner.write(SOURCE)
    # At the pdb prompt: spend 0.5 s (as a user reading the screen would), then continue.
    result = pytester.run(
        sys.executable,
        "-m",
        "pytest",
        "-p",
        "loopguard",
        "-p",
        "no:cacheprovider",
        stdin=b"!__import__('time').sleep(0.5)\nc\n",
        timeout=60,
    )
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            inner.site("# the blocking line", "test_traced"),
            "FAILED test_it.py::test_traced - loopguard: * at *",
        ]
    )
    assert "test_paused - loopguard" not in result.stdout.str()
