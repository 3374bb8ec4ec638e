"""The end-of-session "blocking hotspots" table, severities and the record threshold."""

import re

import pytest
from reports import hotspot_table

pytestmark = pytest.mark.single_version

HEADER = """
import asyncio, time
import pytest
"""

# One HIGH site (1 block of 1.1 s) and one MEDIUM site with more time in total (5 x 0.3 s).
MIXED = (
    HEADER
    + """
def medium():
    time.sleep(0.3)  # medium site

def high():
    time.sleep(1.1)  # high site

@pytest.mark.asyncio
@pytest.mark.parametrize("n", range(3))
async def test_medium(n):
    medium()
    await asyncio.sleep(0)
    if n < 2:
        medium()

@pytest.mark.asyncio
async def test_high():
    high()
"""
)


def test_hotspots_are_sorted_by_severity_then_total(inner):
    result = inner.run(MIXED)
    result.assert_outcomes(failed=4)
    medium, high = inner.line("# medium site"), inner.line("# high site")
    result.stdout.fnmatch_lines(
        [
            "*= loopguard: blocking hotspots =*",
            "severity  count  tests  * max  * total  outcome  call site * blocking operation",
            f"HIGH    *  1      1     1.1? s     1.1? s  failed   test_it.py:{high} in high "
            "* time.sleep(1.1)",
            f"MEDIUM  *  5      3     3?? ms     1.5? s  failed   test_it.py:{medium} in medium "
            "* time.sleep(0.3)",
            "6 blocks at 2 call sites in 4 tests, 2.6? s blocked in total: 6 failed",
        ]
    )


def test_quiet_keeps_the_table_short(inner):
    source = HEADER + "".join(
        f"""
@pytest.mark.asyncio
async def test_{i}():
    time.sleep(0.3)
"""
        for i in range(7)
    )
    result = inner.run(source, "-q")
    result.assert_outcomes(failed=7)
    out = result.stdout.str()
    assert len(re.findall(r"^MEDIUM ", out, re.MULTILINE)) == 5
    result.stdout.fnmatch_lines(
        ["... 2 more call sites (without -q: all)", "7 blocks at 7 call sites in 7 tests*"]
    )
    result = inner.run(source, "-qq")
    assert not re.findall(r"^MEDIUM ", result.stdout.str(), re.MULTILINE)
    result.stdout.fnmatch_lines(["7 blocks at 7 call sites in 7 tests*"])


def test_rows_are_coloured_by_severity(inner):
    result = inner.run(
        HEADER + "\n@pytest.mark.asyncio\nasync def test_a():\n    time.sleep(0.3)\n",
        "--color=yes",
    )
    result.assert_outcomes(failed=1)
    rows = [s for s in result.outlines if "MEDIUM" in s and "time.sleep" in s]
    assert rows and "\x1b[33m" in rows[0]  # yellow


def test_nothing_is_printed_without_blocks(inner):
    result = inner.run(
        HEADER + "\n@pytest.mark.asyncio\nasync def test_ok():\n    await asyncio.sleep(0.01)\n",
        inprocess=True,
    )
    result.assert_outcomes(passed=1)
    assert "hotspots" not in result.stdout.str()


RECORDED = (
    HEADER
    + """
@pytest.mark.asyncio
async def test_short_block():
    time.sleep(0.045)  # short
"""
)


def test_record_threshold_records_short_blocks_as_monitor_without_failing(inner):
    result = inner.run(RECORDED, "--loopguard-record-threshold=20ms")
    result.assert_outcomes(passed=1)
    n = inner.line("# short")
    # A loaded machine may add rows of blocks that were its own wait for a CPU (recorded, and
    # labelled so), wherever the loop thread waited: they are counted in the totals too.
    rows = [r for r in hotspot_table(result.outlines)[1:] if r[:1].isupper()]
    load = [r for r in rows if "(waiting for a CPU)" in r and " recorded " in r]
    blocks = 1 + sum(int(r.split()[1]) for r in load)
    result.stdout.fnmatch_lines(
        [
            "loopguard: *recording blocks over 20 ms*",
            f"MONITOR * 1      1     * ms  * ms  recorded  test_it.py:{n} in test_short_block *",
        ]
    )
    assert len(rows) == 1 + len(load), rows
    result.stdout.fnmatch_lines(
        [
            f"{blocks} block{'s' if blocks > 1 else ''} at {1 + len(load)} call "
            f"site{'s' if load else ''} in 1 test, * blocked in total: {blocks} recorded"
        ]
    )


def test_without_a_record_threshold_short_blocks_are_not_seen(inner):
    result = inner.run(RECORDED)
    result.assert_outcomes(passed=1)
    assert "hotspots" not in result.stdout.str()


def test_record_threshold_from_ini_and_env(inner, monkeypatch):
    result = inner.run(RECORDED, ini="loopguard_record_threshold = 20ms\n")
    result.stdout.fnmatch_lines(["*1 recorded"])
    monkeypatch.setenv("LOOPGUARD_RECORD_THRESHOLD", "0.02")
    result = inner.run(RECORDED)
    result.stdout.fnmatch_lines(["*1 recorded"])


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (
            "abc",
            "*invalid value for --loopguard-record-threshold: 'abc' (from the command line); "
            "expected a positive duration*",
        ),
        (
            "100ms",
            "*invalid value for --loopguard-record-threshold: '100ms' (from the command "
            "line); expected a duration below the threshold (100 ms)*",
        ),
    ],
)
def test_invalid_record_threshold_is_a_usage_error(inner, value, message):
    result = inner.run(RECORDED, f"--loopguard-record-threshold={value}", inprocess=True)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])


def test_severity_scale():
    from loopguard._judge import severity

    assert severity(6.0, 0.1) == "CRITICAL"
    assert severity(5.0, 0.1) == "HIGH"
    assert severity(1.0, 0.1) == "HIGH"
    assert severity(0.999, 0.1) == "MEDIUM"
    assert severity(0.1, 0.1) == "MEDIUM"
    assert severity(0.08, 0.05) == "MONITOR"
    # Under the failing threshold (kept by the record threshold): MONITOR whatever its length.
    assert severity(0.5, 1.0) == "MONITOR"


def test_verbose_lists_the_tests_of_each_hotspot(inner):
    result = inner.run(MIXED, "-v")
    result.stdout.fnmatch_lines(
        [
            "HIGH  * test_it.py:* in high *",
            "    test_it.py::test_high (call)",
            "MEDIUM  * test_it.py:* in medium *",
            "    test_it.py::test_medium[[]0[]] (call)",
            "    test_it.py::test_medium[[]1[]] (call)",
            "    test_it.py::test_medium[[]2[]] (call)",
        ]
    )
