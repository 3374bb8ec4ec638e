"""pytest-xdist: tests fail in their workers, the controller reports every event exactly once."""

import asyncio
import json
import re
import time

import loopguard
import pytest

TESTS = """
import asyncio, time
import pytest

@pytest.mark.asyncio
async def test_blocks_a():
    time.sleep(0.3)  # block a

@pytest.mark.asyncio
async def test_blocks_b():
    time.sleep(0.3)  # block b

@pytest.mark.asyncio
async def test_blocks_twice():
    time.sleep(0.3)  # first of two
    await asyncio.sleep(0)
    time.sleep(0.3)  # second of two

@pytest.mark.asyncio
@pytest.mark.xfail(reason="known to block")
async def test_known_blocker():
    time.sleep(0.3)  # xfail block
    assert False

@pytest.mark.asyncio
async def test_fine_1():
    await asyncio.sleep(0.01)

@pytest.mark.asyncio
async def test_fine_2():
    await asyncio.sleep(0.01)
"""

# Prints what the controller's plugin state holds at the end: one line per event.
CONFTEST = """
import pytest
from loopguard.plugin import _state_key

@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter, config):
    if hasattr(config, "workerinput"):
        return
    state = config.stash[_state_key]
    failed = 0
    for v in state.verdicts:
        ev = v.event
        site = ev.site.lineno if ev.site else None
        is_failed = v.outcome == "failed"
        failed += is_failed
        terminalreporter.write_line(
            f"LG-EVENT {ev.test} {ev.phase} line={site} failed={is_failed}"
        )
    terminalreporter.write_line(f"LG-TOTAL all={len(state.verdicts)} failed={failed}")
"""


INNER = dict(files={"conftest": CONFTEST})


def events(result):
    return sorted(
        tuple(m.groups())
        for m in (
            re.match(r"LG-EVENT (\S+) (\S+) line=(\S+) failed=(\S+)$", text)
            for text in result.stdout.lines
        )
        if m
    )


def test_blocking_tests_fail_in_workers_with_the_loopguard_message(inner):
    result = inner.run(TESTS, "-n", "2")
    result.assert_outcomes(failed=3, passed=2, xfailed=1)
    # The one-line summary keeps loopguard's message (the report crossed a process boundary).
    result.stdout.fnmatch_lines_random(
        [
            "FAILED test_it.py::test_blocks_a - loopguard: * at *",
            "FAILED test_it.py::test_blocks_b - loopguard: * at *",
            "FAILED test_it.py::test_blocks_twice - loopguard: * at *",
        ]
    )
    # The full report, with the source line, reaches the controller's FAILURES section.
    result.stdout.fnmatch_lines(["*>*time.sleep(0.3)  # block a"])


def test_controller_holds_every_workers_events_exactly_once(inner):
    result = inner.run(TESTS, "-n", "2")
    a, b = inner.line("# block a"), inner.line("# block b")
    first, second = inner.line("# first of two"), inner.line("# second of two")
    xf = inner.line("# xfail block")
    assert events(result) == sorted(
        [
            ("test_it.py::test_blocks_a", "call", str(a), "True"),
            ("test_it.py::test_blocks_b", "call", str(b), "True"),
            ("test_it.py::test_blocks_twice", "call", str(first), "True"),
            ("test_it.py::test_blocks_twice", "call", str(second), "True"),
            ("test_it.py::test_known_blocker", "call", str(xf), "False"),
        ]
    )
    result.stdout.fnmatch_lines(["LG-TOTAL all=5 failed=4"])


def test_summary_lists_each_block_once(inner):
    result = inner.run(TESTS, "-n", "2", conftest="")
    result.stdout.fnmatch_lines(["*= loopguard: blocking hotspots =*"])
    text = result.stdout.str()
    # The table only: the short test summary below it may repeat call sites (it is not cut to
    # the terminal's width when CI is set).
    start = text.index("loopguard: blocking hotspots")
    summary = text[start : text.index("blocked in total", start)]
    for marker in ("# block a", "# block b", "# first of two", "# second of two"):
        assert summary.count(f"test_it.py:{inner.line(marker)} ") == 1, summary
    assert "# xfail block" not in summary
    # The controller's header is printed once; the workers' are not shown.
    assert text.count("loopguard: threshold 100 ms") == 1


def test_n_auto(inner):
    result = inner.run(TESTS, "-n", "auto")
    result.assert_outcomes(failed=3, passed=2, xfailed=1)
    result.stdout.fnmatch_lines(["LG-TOTAL all=5 failed=4"])


def test_block_in_a_workers_last_teardown_is_not_lost(inner):
    # Session fixtures are torn down when the worker runs out of tests, just before it exits.
    result = inner.run(
        """
import asyncio, time
import pytest

@pytest.fixture(scope="session")
def service():
    yield
    async def shutdown():
        time.sleep(0.3)  # blocking shutdown
    asyncio.run(shutdown())

def test_uses_service(service):
    pass
""",
        "-n",
        "2",
        "--dist",
        "loadfile",
    )
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_uses_service*",
            inner.site("# blocking shutdown", "*shutdown"),
        ]
    )
    n = inner.line("# blocking shutdown")
    assert events(result) == [("test_it.py::test_uses_service", "teardown", str(n), "True")]


# Each worker writes how many verdicts it still holds once its tests have run.
KEPT = """
def pytest_sessionfinish(session):
    config = session.config
    if hasattr(config, "workerinput"):
        kept = len(config.stash[_state_key].verdicts)
        with open("kept-" + config.workerinput["workerid"], "w") as f:
            f.write(str(kept))
"""


@pytest.mark.slow
def test_a_worker_keeps_no_verdict_it_has_shipped(inner):
    result = inner.run(TESTS, "-n", "2", conftest=CONFTEST + KEPT)
    result.assert_outcomes(failed=3, passed=2, xfailed=1)
    result.stdout.fnmatch_lines(["LG-TOTAL all=5 failed=4"])
    kept = {p.name: p.read_text() for p in inner.pytester.path.glob("kept-gw*")}
    assert kept == {"kept-gw0": "0", "kept-gw1": "0"}


def test_without_xdist_the_state_is_the_same(inner):
    result = inner.run(TESTS, "-p", "no:xdist")
    result.assert_outcomes(failed=3, passed=2, xfailed=1)
    result.stdout.fnmatch_lines(["LG-TOTAL all=5 failed=4"])


def test_block_events_survive_a_round_trip_through_plain_data():
    async def main():
        await asyncio.sleep(0)
        time.sleep(0.3)  # round-trip block

    with loopguard.guard(threshold="100ms", raise_=False) as g:
        asyncio.run(main())
    (ev,) = g.events
    data = json.loads(json.dumps(ev.to_json()))
    back = loopguard.BlockEvent.from_json(data)
    assert back == ev
    assert back.site == ev.site and isinstance(back.site, loopguard.Frame)
    assert all(isinstance(s, loopguard.Sample) for s in back.samples)
    assert "round-trip block" in back.site.source
    # Keys a newer writer adds are ignored.
    assert loopguard.BlockEvent.from_json({**data, "new_key": 1}) == ev


def test_raise_mode_under_xdist(inner):
    result = inner.run(
        """
import time
import pytest

@pytest.mark.asyncio
async def test_cpu():
    end = time.perf_counter() + 2.0
    while time.perf_counter() < end:  # raise-mode loop
        pass

@pytest.mark.asyncio
async def test_fine():
    pass
""",
        "-n",
        "2",
        "--loopguard-mode=raise",
    )
    result.assert_outcomes(failed=1, passed=1)
    n = inner.line("# raise-mode loop")
    result.stdout.fnmatch_lines(
        ["*loopguard.LoopBlockedError: loopguard: this code blocked the event loop*"]
    )
    assert events(result) == [("test_it.py::test_cpu", "call", str(n), "True")]
