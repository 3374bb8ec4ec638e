"""Empty means not clean: the JSON report counts the tests that ran with loopguard enabled, and
``python -m loopguard`` refuses a report that guarded none unless told to accept it."""

import json
import sys

import pytest

HEADER = """
import asyncio, time
import pytest
"""

INNER = dict(header=HEADER)

NOT_GUARDED = "NO TEST WAS GUARDED"


def run_cli(pytester, *args):
    return pytester.run(sys.executable, "-m", "loopguard", *args)


def guarded(pytester, name="report.json"):
    data = json.loads((pytester.path / name).read_text())
    (run,) = data["runs"]
    assert run["guarded"] == data["totals"]["guarded"]
    return data["totals"]["guarded"]


def assert_refused(pytester, report):
    """``summary`` of ``report`` exits non-zero, naming it and --allow-empty; with
    --allow-empty it exits 0."""
    result = run_cli(pytester, "summary", report)
    assert result.ret == 5, result.stderr.str()
    result.stdout.fnmatch_lines(["no blocks"])
    err = result.stderr.str()
    assert f"{report}: {NOT_GUARDED}" in err and "--allow-empty" in err
    allowed = run_cli(pytester, "summary", "--allow-empty", report)
    assert allowed.ret == 0, allowed.stderr.str()
    assert "no test was guarded (allowed by --allow-empty)" in allowed.stderr.str()


CLEAN = """
@pytest.mark.asyncio
async def test_fine():
    await asyncio.sleep(0)

def test_sync():
    pass
"""

SOME = (
    CLEAN
    + """
@pytest.mark.asyncio
async def test_blocks():
    time.sleep(0.3)
"""
)


def test_a_run_that_selects_no_test_is_refused(inner, pytester):
    result = inner.run(SOME, "--loopguard-json=report.json", "-k", "no_such_test", inprocess=True)
    assert result.ret == pytest.ExitCode.NO_TESTS_COLLECTED
    result.stdout.fnmatch_lines(["loopguard: no test was guarded*"])
    assert guarded(pytester) == 0
    assert_refused(pytester, "report.json")


DISABLED = """
pytestmark = pytest.mark.loopguard(enabled=False)

@pytest.mark.asyncio
async def test_blocks_unguarded():
    time.sleep(0.3)

def test_sync():
    pass
"""


def test_a_run_whose_every_test_is_disabled_is_refused(inner, pytester):
    result = inner.run(DISABLED, "--loopguard-json=report.json", inprocess=True)
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["loopguard: no test was guarded: none ran with loopguard*"])
    assert guarded(pytester) == 0
    assert_refused(pytester, "report.json")
    # The baseline of nothing would tolerate nothing: refused, nothing written.
    done = run_cli(pytester, "baseline", "report.json", "-o", "baseline.json")
    assert done.ret == 5 and NOT_GUARDED in done.stderr.str()
    assert not (pytester.path / "baseline.json").exists()
    done = run_cli(pytester, "baseline", "--allow-empty", "report.json", "-o", "baseline.json")
    assert (
        done.ret == 0 and json.loads((pytester.path / "baseline.json").read_text())["sites"] == []
    )
    # The HTML page says so at its top (it is not a gate).
    done = run_cli(pytester, "html", "report.json", "-o", "r.html")
    assert done.ret == 0 and "no test was guarded" in done.stderr.str()
    assert "No test was guarded" in (pytester.path / "r.html").read_text()


SKIPPED = """
@pytest.mark.skip(reason="not today")
@pytest.mark.asyncio
async def test_skipped():
    pass

@pytest.mark.loopguard(enabled=False)
def test_disabled():
    pass
"""


@pytest.mark.slow
@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["one process", "xdist"])
def test_a_normal_run_counts_its_guarded_tests_and_exits_as_before(inner, pytester, workers):
    result = inner.run(SOME + SKIPPED, "--loopguard-json=report.json", *workers)
    result.assert_outcomes(passed=3, failed=1, skipped=1)
    assert result.ret == 1
    # The three tests that ran with loopguard enabled (not the skipped, not the disabled one).
    assert guarded(pytester) == 3
    assert "no test was guarded" not in result.stdout.str()
    summary = run_cli(pytester, "summary", "report.json")
    assert summary.ret == 0 and summary.stderr.str() == ""
    summary.stdout.fnmatch_lines(["1 block at 1 call site in 1 test, * 1 failed"])
    clean = inner.run(CLEAN, "--loopguard-json=clean.json", *workers)
    assert clean.ret == 0
    assert guarded(pytester, "clean.json") == 2
    done = run_cli(pytester, "summary", "clean.json")
    assert done.ret == 0 and done.stdout.lines == ["no blocks"]


# --- merged and older reports, in-process --------------------------------------------------


def report(test, run, guarded=None):
    from test_cli import report as make

    data = make(tests=(test,), run=run)
    if guarded is not None:
        data["runs"][0]["guarded"] = guarded
    return data


def write(tmp_path, name, data):
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return str(path)


def main(capsys, *argv):
    from loopguard._cli import main as cli_main

    code = cli_main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_merging_sums_the_guarded_tests(tmp_path, capsys):
    a = write(tmp_path, "a.json", report("t::a", "run-1", guarded=4))
    b = write(tmp_path, "b.json", report("t::b", "run-2", guarded=0))
    out = tmp_path / "m.json"
    code, _, err = main(capsys, "merge", a, b, "-o", str(out))
    assert (code, err) == (0, "")
    merged = json.loads(out.read_text())
    assert merged["totals"]["guarded"] == 4
    assert [r["guarded"] for r in merged["runs"]] == [4, 0]
    # The merged report merges and summarises as its parts did.
    code, _, err = main(capsys, "summary", str(out))
    assert (code, err) == (0, "")


def test_merging_shards_that_guarded_nothing_is_refused_but_written(tmp_path, capsys):
    a = write(tmp_path, "a.json", report("t::a", "run-1", guarded=0))
    b = write(tmp_path, "b.json", report("t::b", "run-2", guarded=0))
    out = tmp_path / "m.json"
    code, printed, err = main(capsys, "merge", a, b, "-o", str(out))
    assert code == 5
    assert "merged 2 reports" in printed
    assert f"{a}, {b}: {NOT_GUARDED}" in err and "--allow-empty" in err
    assert json.loads(out.read_text())["totals"]["guarded"] == 0
    code, _, err = main(capsys, "merge", "--allow-empty", a, b, "-o", str(out))
    assert code == 0 and "allowed by --allow-empty" in err
    code, _, err = main(capsys, "summary", str(out))
    assert code == 5 and f"{out}: {NOT_GUARDED}" in err


def test_a_report_that_does_not_count_is_unknown_not_empty(tmp_path, capsys):
    old = write(tmp_path, "old.json", report("t::a", "run-1"))
    code, out, err = main(capsys, "summary", old)
    assert code == 0 and "MEDIUM" in out
    assert f"{old}: the report does not say how many tests were guarded" in err
    # Beside a shard that counted none: still not known to be empty.
    none = write(tmp_path, "none.json", report("t::b", "run-2", guarded=0))
    merged = tmp_path / "m.json"
    code, _, err = main(capsys, "merge", old, none, "-o", str(merged))
    assert code == 0 and f"{old}: the report does not say" in err
    assert json.loads(merged.read_text())["totals"]["guarded"] is None
    # Beside a shard that guarded some: those were guarded, whatever the other did.
    some = write(tmp_path, "some.json", report("t::c", "run-3", guarded=2))
    code, _, err = main(capsys, "summary", old, some)
    assert (code, err) == (0, "")


def test_a_bad_count_is_named(tmp_path, capsys):
    bad = write(tmp_path, "bad.json", report("t::a", "run-1", guarded=-1))
    code, _, err = main(capsys, "summary", bad)
    assert code == 2
    assert f"{bad}: runs[0]: expected 'guarded' to be a count of tests" in err
