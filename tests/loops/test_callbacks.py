"""A loop iteration made of many short callbacks is recorded, not failed; a callback that itself
blocks fails at its line."""

import json
import re

import pytest

pytestmark = pytest.mark.single_version

SOURCE = """
import asyncio, time
import pytest

async def short():
    time.sleep(0.005)  # short
    await asyncio.sleep(0)

async def long():
    time.sleep(0.15)  # long
    await asyncio.sleep(0)

@pytest.mark.asyncio
async def test_many_short():
    # Created together: their first steps all run in the next loop iteration.
    await asyncio.gather(*(short() for _ in range(50)))

@pytest.mark.asyncio
async def test_one_long_among_them():
    tasks = [short() for _ in range(25)] + [long()] + [short() for _ in range(25)]
    await asyncio.gather(*tasks)
"""


@pytest.fixture
def report(pytester, inner):
    result = inner.run(SOURCE, "--loopguard-threshold=100ms", "--loopguard-json=r.json")
    data = json.loads((pytester.path / "r.json").read_text())
    return result, data


def events_of(data, name):
    return [e for e in data["events"] if e["test"].endswith(name)]


@pytest.mark.linux_full  # telling callbacks apart needs the GIL-free reader
def test_many_short_callbacks_in_one_iteration_are_recorded_not_failed(report, inner):
    result, data = report
    result.assert_outcomes(passed=1, failed=1)
    [ev] = events_of(data, "test_many_short")
    # 50 callbacks of 5 ms: one stretch of about 250 ms without polling for I/O.
    assert ev["duration_ms"] > 200
    assert ev["outcome"] == "recorded"
    assert ev["cause"] == "callbacks"
    n = sum(1 for c in ev["callbacks"] if c["in_callback"])
    assert n >= 5, ev["callbacks"]
    assert ev["reason"].startswith(f"{n} callbacks in one loop iteration, the longest at most ")
    # Sampled in the sleep or on the callback's next line, just before it yields: both are short's.
    first = inner.line("# short")
    assert re.search(
        rf"at test_it\.py:({first}|{first + 1}) in short; none reached the threshold$", ev["reason"]
    ), ev["reason"]
    assert all(c["max_ms"] < 100 for c in ev["callbacks"])
    # The first callbacks of the stretch were sampled: well before the threshold.
    assert ev["callbacks"][0]["first_ms"] < 60
    result.stdout.fnmatch_lines(["MEDIUM * recorded *(many callbacks) time.sleep(0.005)"])


@pytest.mark.linux_full  # telling callbacks apart needs the GIL-free reader
def test_one_callback_that_blocks_among_short_ones_fails_at_its_line(report, inner):
    result, data = report
    [ev] = events_of(data, "test_one_long_among_them")
    assert ev["outcome"] == "failed"
    assert ev["site"]["line"] == inner.line("# long")
    # The long callback is the one that surely lasted longest (two samples or more in it): how
    # long surely depends on how often a loaded machine let the watchdog sample it.
    longest = max(ev["callbacks"], key=lambda c: c["min_ms"])
    assert longest["min_ms"] > 0 and longest["max_ms"] >= 100, ev["callbacks"]
    assert longest["site"]["line"] == inner.line("# long")
    result.stdout.fnmatch_lines(
        [
            "loopguard: event loop blocked for * (threshold 100 ms)",
            "",
            f"    test_it.py:{inner.line('# long')} in long",
            "  >     time.sleep(0.15)  # long",
        ]
    )


def test_stacks_read_with_the_gil_cannot_tell_callbacks_apart_and_fail_as_before(pytester, inner):
    result = inner.run(
        SOURCE,
        "--loopguard-threshold=100ms",
        "--loopguard-sampler=gil",
        "--loopguard-json=r.json",
        "-k",
        "many_short",
    )
    result.assert_outcomes(failed=1)
    [ev] = json.loads((pytester.path / "r.json").read_text())["events"]
    assert ev["callbacks"] == []
