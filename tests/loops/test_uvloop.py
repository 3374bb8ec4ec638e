"""uvloop loops are watched by a periodic beat (see _uvloop.py): what is particular to uvloop (the
cases every kind of loop shares, with every way of making a uvloop loop, are in
test_loop_kinds.py)."""

import sys

import pytest

pytestmark = pytest.mark.single_version

pytest.importorskip("uvloop")

HEADER = """
import asyncio, time
import pytest, uvloop

async def blocker():
    await asyncio.sleep(0.01)
    time.sleep(0.4)  # the blocking line
"""


INNER = dict(header=HEADER)


def test_beat_is_cancelled_when_the_loop_stops(inner):
    # The loop is run several times and stays open in between: no beat runs while it is
    # stopped (no stray callbacks, no events attributed to later tests).
    result = inner.run(
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


def test_uvloop_and_trio_imported_inside_a_guard_are_watched(pytester, inner):
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
    uv = inner.line("# uvloop blocking line", "late.py")
    tr = inner.line("# trio blocking line", "late.py")
    result.stdout.fnmatch_lines(
        [f"uvloop reported uvloop late.py:{uv} in a", f"trio reported trio late.py:{tr} in t"]
    )
