"""A suite run in shards: the merged reports give the whole run's hotspot table and baseline."""

import json
import re

import pytest
from conftest import INI
from reports import cli, hotspot_table

APP = """
import time

def slow_a():
    time.sleep(0.7)

def slow_b():
    time.sleep(0.5)

def short():
    time.sleep(0.3)
"""

TESTS = """
import pytest
import app

@pytest.mark.asyncio
async def test_a1():
    app.slow_a()

@pytest.mark.asyncio
async def test_a2():
    app.slow_a()

@pytest.mark.asyncio
async def test_b():
    app.slow_b()

@pytest.mark.asyncio
async def test_short():
    app.short()

def test_quiet():
    pass
"""

BASELINE = {
    "version": 1,
    "sites": [{"file": "app.py", "function": "slow_b"}, {"file": "app.py", "function": "gone"}],
}

SHARDS = ("a1", "a2", "not a1 and not a2")

_DURATION = re.compile(r"\d+(\.\d+)? (ms|s)\b")


def _masked(lines):
    """The table without its durations (they differ from run to run), blanks normalised."""
    return [" ".join(_DURATION.sub("D", line).split()) for line in lines]


@pytest.mark.slow
def test_shards_merge_into_the_whole_run(pytester):
    pytester.makeini(INI)
    pytester.makepyfile(app=APP, test_it=TESTS)
    (pytester.path / "base.json").write_text(json.dumps(BASELINE))
    # Thresholds well above what a loaded machine's stall adds to a shard (a recorded wait for a
    # CPU of 65 ms once made one more block than the whole run had).
    common = (
        "-p",
        "loopguard",
        "--loopguard-threshold=400ms",
        "--loopguard-record-threshold=200ms",
        "--loopguard-baseline=base.json",
    )

    whole = pytester.runpytest_subprocess(*common, "--loopguard-json=whole.json")
    whole.assert_outcomes(passed=3, failed=2)
    for i, expr in enumerate(SHARDS):
        shard = pytester.runpytest_subprocess(
            *common, f"--loopguard-json=shard{i}.json", "-k", expr
        )
        assert shard.ret in (0, 1), shard.stdout.str()
    shards = [f"shard{i}.json" for i in range(len(SHARDS))]

    printed = cli(pytester, "merge", *shards, "-o", "merged.json").stdout.lines
    assert printed == ["loopguard: merged 3 reports (4 blocks in 4 tests) into merged.json"]
    merged = json.loads((pytester.path / "merged.json").read_text())
    assert sorted(e["test"] for e in merged["events"]) == [
        f"test_it.py::test_{n}" for n in ("a1", "a2", "b", "short")
    ]
    assert merged["fixed"] == [{"file": "app.py", "function": "gone"}]
    assert len(merged["runs"]) == 3
    # Each shard counted the tests it guarded; the merged report sums them: the whole suite's.
    assert merged["totals"]["guarded"] == 5
    assert json.loads((pytester.path / "whole.json").read_text())["totals"]["guarded"] == 5

    # The same table as the whole run's report, and as the whole session printed it.
    table = _masked(cli(pytester, "summary", "merged.json").stdout.lines)
    assert table == _masked(cli(pytester, "summary", "whole.json").stdout.lines)
    assert table == _masked(hotspot_table(whole.stdout.lines))
    assert table[1].startswith("MEDIUM 2 2 D D failed app.py:4 in slow_a time.sleep(0.7)")
    assert table[2].startswith("MEDIUM 1 1 D D baselined app.py:7 in slow_b")
    assert table[3].startswith("MONITOR 1 1 D D recorded app.py:10 in short")
    assert table[4] == (
        "4 blocks at 3 call sites in 4 tests, D blocked in total: 2 failed, 1 baselined, 1 recorded"
    )
    assert table[5].startswith("1 call site of the baseline did not block in this run")

    # The baseline of the shards is the one the whole suite writes with --loopguard-baseline-update.
    cli(pytester, "baseline", *shards, "-o", "from-shards.json")
    update = pytester.runpytest_subprocess(
        *common[:4], "--loopguard-baseline=whole-baseline.json", "--loopguard-baseline-update"
    )
    update.assert_outcomes(passed=5)
    written = (pytester.path / "whole-baseline.json").read_text()
    assert (pytester.path / "from-shards.json").read_text() == written
    assert json.loads(written)["sites"] == [
        {"file": "app.py", "function": "slow_a"},
        {"file": "app.py", "function": "slow_b"},
    ]
