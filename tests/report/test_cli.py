"""``python -m loopguard``: every bad input is a clear error, exit status 2, nothing written."""

import json
import subprocess
import sys

import pytest
from loopguard._cli import main


def _event(test, file="app/x.py", line=3, function="f", ms=300.0, outcome="failed"):
    site = {"file": file, "line": line, "function": function, "source": "time.sleep(0.3)"}
    return {
        "test": test,
        "phase": "call",
        "start_ms": 1_700_000_000_000.0,
        "duration_ms": ms,
        "threshold_ms": 100.0,
        "severity": "MEDIUM",
        "outcome": outcome,
        "reason": None,
        "mode": "fail",
        "site": site,
        "operation": None,
        "stack": [{"file": "tests/test_x.py", "line": 9, "function": test.split("::")[-1]}, site],
        "thread": "MainThread",
        "task": "Task-1",
        "loop": "asyncio",
        "gil": "released",
        "gil_holder": None,
        "syscall": "clock_nanosleep",
        "starved": False,
        "several_calls": False,
        "captured_after_ms": 100.5,
        "late": False,
        "cause": None,
        "hint": None,
        "cpu_wait_ms": 0.0,
        "callbacks": [],
    }


def report(tests=("tests/test_x.py::test_a",), run="run-1", interrupted=False, **settings):
    events = [_event(t) for t in tests]
    data = {
        "version": 1,
        "settings": {
            "threshold_ms": 100.0,
            "record_threshold_ms": None,
            "mode": "fail",
            "gc": "exclude",
            "cpu_wait": "exclude",
            "sampler": "auto",
            "allow": [],
            "scan": [],
            "baseline": None,
            **settings,
        },
        "environment": {
            "python": "3.11.2",
            "implementation": "cpython",
            "platform": "linux",
            "pytest": "9.0",
            "loopguard": "0.1.0",
            "sampler": "native",
        },
        "totals": {"events": len(events), "tests": len(tests), "blocked_ms": 300.0 * len(tests)},
        "tests": [
            {"test": t, "events": 1, "blocked_ms": 300.0, "max_ms": 300.0, "phases": {}}
            for t in tests
        ],
        "events": events,
        "fixed": [],
        "runs": [{"id": run, "interrupted": interrupted}],
    }
    return data


def write(path, data):
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return str(path)


def fails(capsys, argv, *expected):
    """Run the command, expect exit status 2 and every ``expected`` text in its error."""
    with pytest.raises(SystemExit) as exc:
        raise SystemExit(main(argv))
    assert exc.value.code == 2
    err = capsys.readouterr().err
    for text in expected:
        assert text in err, err
    return err


@pytest.fixture
def good(tmp_path):
    return write(tmp_path / "a.json", report())


@pytest.mark.parametrize("command", ["merge", "baseline", "html", "summary"])
def test_a_missing_report_is_named(tmp_path, capsys, command):
    out = tmp_path / "out"
    argv = [command, str(tmp_path / "nope.json")] + (
        [] if command == "summary" else ["-o", str(out)]
    )
    fails(capsys, argv, "nope.json: no such file")
    assert not out.exists()


def test_a_directory_is_not_a_report(tmp_path, capsys):
    fails(capsys, ["summary", str(tmp_path)], "is a directory; expected a JSON report")


@pytest.mark.parametrize(
    "text, expected",
    [
        ('{"version": 1, "events": [', "not JSON"),
        ("", "not JSON"),
        ("[1, 2]", "not a loopguard report"),
        (
            '{"version": 1, "sites": []}',
            "not a loopguard report: expected an object under 'settings'",
        ),
        ('{"version": "1"}', "not a loopguard report"),
    ],
)
def test_a_file_that_is_not_a_report(tmp_path, capsys, text, expected):
    path = write(tmp_path / "bad.json", text)
    fails(capsys, ["summary", path], f"{path}: {expected}")


def test_a_broken_event_is_named_by_its_index(tmp_path, capsys):
    data = report(tests=("t::a", "t::b"))
    data["events"][1]["outcome"] = "exploded"
    path = write(tmp_path / "r.json", data)
    fails(capsys, ["summary", path], "events[1]: unknown outcome 'exploded'")
    del data["events"][1]["duration_ms"]
    write(tmp_path / "r.json", data)
    fails(capsys, ["summary", path], "events[1]: expected 'duration_ms' of type number")


def test_a_newer_schema_asks_for_an_upgrade(tmp_path, capsys):
    data = report()
    data["version"] = 2
    path = write(tmp_path / "new.json", data)
    fails(capsys, ["summary", path], "newer loopguard (report version 2)", "upgrade")


def test_the_same_report_twice_is_refused(tmp_path, capsys, good):
    out = tmp_path / "m.json"
    fails(capsys, ["merge", good, good, "-o", str(out)], "is given twice", "same run")
    copy_ = write(tmp_path / "copy.json", report())
    fails(capsys, ["merge", good, copy_, "-o", str(out)], "are reports of the same run")
    assert not out.exists()


def test_a_merged_report_does_not_merge_with_its_own_shard(tmp_path, capsys, good):
    b = write(tmp_path / "b.json", report(tests=("tests/test_x.py::test_b",), run="run-2"))
    merged = tmp_path / "m.json"
    assert main(["merge", good, b, "-o", str(merged)]) == 0
    fails(capsys, ["merge", str(merged), b, "-o", str(tmp_path / "m2.json")], "same run")


def test_overlapping_shards_are_refused(tmp_path, capsys, good):
    b = write(tmp_path / "b.json", report(run="run-2"))
    fails(
        capsys,
        ["merge", good, b, "-o", str(tmp_path / "m.json")],
        "both ran the test tests/test_x.py::test_a",
    )


def test_settings_that_differ_are_named(tmp_path, capsys, good):
    b = write(
        tmp_path / "b.json",
        report(tests=("t::b",), run="run-2", threshold_ms=50.0, mode="warn"),
    )
    err = fails(
        capsys, ["merge", good, b, "-o", str(tmp_path / "m.json")], "disagree on their settings"
    )
    assert "threshold_ms: 100.0 in" in err and "50.0 in" in err and "mode: 'fail'" in err


def test_environments_that_differ_are_named(tmp_path, capsys, good):
    data = report(tests=("t::b",), run="run-2")
    data["environment"]["python"] = "3.13.0"
    b = write(tmp_path / "b.json", data)
    fails(capsys, ["summary", good, b], "disagree on their environment (python: '3.11.2'")


def test_the_baseline_refuses_an_interrupted_run(tmp_path, capsys, good):
    b = write(tmp_path / "b.json", report(tests=("t::b",), run="run-2", interrupted=True))
    out = tmp_path / "baseline.json"
    fails(capsys, ["baseline", good, b, "-o", str(out)], "b.json: the run was interrupted")
    assert not out.exists()


def test_the_baseline_does_not_overwrite_another_file(tmp_path, capsys, good):
    out = tmp_path / "notes.json"
    out.write_text('{"my": "notes"}')
    fails(capsys, ["baseline", good, "-o", str(out)], f"invalid baseline file {out}")
    assert out.read_text() == '{"my": "notes"}'


@pytest.mark.parametrize("command", ["merge", "baseline", "html"])
def test_an_output_that_cannot_be_written(tmp_path, capsys, good, command):
    fails(
        capsys,
        [command, good, "-o", str(tmp_path / "no" / "such" / "dir.json")],
        "invalid value for -o",
        "does not exist",
    )
    fails(capsys, [command, good, "-o", str(tmp_path)], "it is a directory, expected a file path")


def test_a_failed_merge_leaves_the_old_output_whole(tmp_path, capsys, good):
    out = tmp_path / "m.json"
    out.write_text("previous")
    fails(capsys, ["merge", good, str(tmp_path / "missing.json"), "-o", str(out)], "no such file")
    assert out.read_text() == "previous"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize(
    "argv, expected",
    [
        ([], "usage: python -m loopguard"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        (["merge", "a.json"], "the following arguments are required: -o/--output"),
        (["summary"], "the following arguments are required: REPORT"),
    ],
)
def test_usage_errors(capsys, argv, expected):
    fails(capsys, argv, expected)


def test_merge_keeps_every_event_once_and_recounts(tmp_path, capsys, good):
    b = write(tmp_path / "b.json", report(tests=("t::b", "t::c"), run="run-2"))
    out = tmp_path / "m.json"
    assert main(["merge", good, b, "-o", str(out)]) == 0
    assert "merged 2 reports (3 blocks in 3 tests)" in capsys.readouterr().out
    merged = json.loads(out.read_text())
    assert [e["test"] for e in merged["events"]] == ["tests/test_x.py::test_a", "t::b", "t::c"]
    assert [t["test"] for t in merged["tests"]] == ["t::b", "t::c", "tests/test_x.py::test_a"]
    assert merged["totals"]["events"] == 3 and merged["totals"]["blocked_ms"] == 900.0
    assert merged["totals"]["outcomes"]["failed"] == 3
    assert [r["id"] for r in merged["runs"]] == ["run-1", "run-2"]


def test_fixed_sites_are_those_no_shard_saw(tmp_path):
    a, b = report(), report(tests=("t::b",), run="run-2")
    a["fixed"] = [{"file": "app/y.py", "function": "g"}, {"file": "app/z.py", "function": "h"}]
    b["fixed"] = [{"file": "app/y.py", "function": "g"}]
    out = tmp_path / "m.json"
    assert (
        main(
            ["merge", write(tmp_path / "a.json", a), write(tmp_path / "b.json", b), "-o", str(out)]
        )
        == 0
    )
    assert json.loads(out.read_text())["fixed"] == [{"file": "app/y.py", "function": "g"}]


def test_summary_prints_the_table_and_github_annotations(tmp_path, capsys, monkeypatch):
    data = report(tests=("t::a", "t::b"))
    data["events"][1]["outcome"] = "baselined"
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GITHUB_WORKSPACE", raising=False)
    assert main(["summary", "--github", write(tmp_path / "r.json", data)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert (
        out[0].split()
        == "severity count tests max total outcome call site blocking operation".split()
    )
    assert out[1].split()[:7] == ["MEDIUM", "2", "2", "300", "ms", "600", "ms"]
    assert "1 failed, 1 baselined" in out[1] and "app/x.py:3 in f" in out[1]
    assert out[1].rstrip().endswith("time.sleep(0.3)")  # the source line the report recorded
    assert (
        out[2]
        == "2 blocks at 1 call site in 2 tests, 600 ms blocked in total: 1 failed, 1 baselined"
    )
    assert out[3].startswith(
        "::error file=app/x.py,line=3,title=loopguard%3A event loop blocked (MEDIUM)::"
    )
    assert out[4].startswith("::warning file=app/x.py,line=3,")


def test_baseline_of_shards(tmp_path, capsys, good):
    data = report(tests=("t::b", "t::c"), run="run-2")
    data["events"][1]["site"] = {"file": "app/w.py", "line": 7, "function": "w"}
    data["events"][1]["outcome"] = "allowed"
    out = tmp_path / "baseline.json"
    assert main(["baseline", good, write(tmp_path / "b.json", data), "-o", str(out)]) == 0
    assert "(1 call site)" in capsys.readouterr().out
    assert json.loads(out.read_text())["sites"] == [{"file": "app/x.py", "function": "f"}]


def test_python_dash_m_runs_it(tmp_path, good):
    done = subprocess.run(
        [sys.executable, "-m", "loopguard", "summary", str(tmp_path / "missing.json")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr == f"loopguard: error: {tmp_path / 'missing.json'}: no such file\n"
    done = subprocess.run(
        [sys.executable, "-m", "loopguard", "summary", good],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0 and "MEDIUM" in done.stdout
