"""The baseline ratchet: known call sites pass, new ones fail, fixed ones are listed."""

import json

import pytest

pytestmark = pytest.mark.single_version

APP = """
import time

def slow_a():
    time.sleep(0.3)

def slow_b():
    time.sleep(0.3)
"""

TESTS = """
import pytest
import app

@pytest.mark.asyncio
async def test_a():
    app.slow_a()

@pytest.mark.asyncio
async def test_b():
    app.slow_b()
"""


INNER = dict(files={"app": APP})


@pytest.mark.slow
def test_baseline_life_cycle(pytester, inner):
    base = pytester.path / "loopguard-baseline.json"

    # 1. Record the current call sites.
    result = inner.run(TESTS, f"--loopguard-baseline={base.name}", "--loopguard-baseline-update")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines([f"loopguard: baseline written to {base} (2 call sites)"])
    first = base.read_text()
    assert json.loads(first)["sites"] == [
        {"file": "app.py", "function": "slow_a"},
        {"file": "app.py", "function": "slow_b"},
    ]

    # 2. Known sites pass, even when their line moves.
    moved = "\n# a comment\n# another\n" + APP
    result = inner.run(TESTS, f"--loopguard-baseline={base.name}", app=moved)
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        ["loopguard: baseline loopguard-baseline.json (2 call sites)*", "*2 baselined"]
    )

    # 3. A new blocking call site fails.
    new = APP.replace("def slow_b():\n    time.sleep(0.3)", "def slow_b():\n    slow_c()")
    new += "\ndef slow_c():\n    time.sleep(0.3)\n"
    result = inner.run(TESTS, f"--loopguard-baseline={base.name}", app=new)
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*app.py:* in slow_c*", "FAILED test_it.py::test_b*"])

    # 4. A baselined site that no longer blocks is listed as fixed.
    fixed = APP.replace("def slow_b():\n    time.sleep(0.3)", "def slow_b():\n    pass")
    result = inner.run(TESTS, f"--loopguard-baseline={base.name}", app=fixed)
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        [
            "1 call site of the baseline did not block in this run (fixed? shrink the file "
            "with --loopguard-baseline-update):",
            "    app.py in slow_b",
        ]
    )

    # 5. Updating shrinks the file; the same run writes the same bytes.
    result = inner.run(
        TESTS, f"--loopguard-baseline={base.name}", "--loopguard-baseline-update", app=fixed
    )
    result.assert_outcomes(passed=2)
    shrunk = base.read_text()
    assert json.loads(shrunk)["sites"] == [{"file": "app.py", "function": "slow_a"}]
    inner.run(TESTS, f"--loopguard-baseline={base.name}", "--loopguard-baseline-update", app=fixed)
    assert base.read_text() == shrunk


def test_fixed_sites_are_in_the_json_report(pytester, inner):
    (pytester.path / "b.json").write_text(
        json.dumps({"version": 1, "sites": [{"file": "gone.py", "function": "f"}]})
    )
    result = inner.run(TESTS, "--loopguard-baseline=b.json", "--loopguard-json=r.json")
    result.assert_outcomes(failed=2)
    data = json.loads((pytester.path / "r.json").read_text())
    assert data["fixed"] == [{"file": "gone.py", "function": "f"}]
    assert data["settings"]["baseline"] == "b.json"


def test_ini_baseline(pytester, inner):
    (pytester.path / "b.json").write_text(
        json.dumps({"version": 1, "sites": [{"file": "app.py", "function": "slow_a"}]})
    )
    result = inner.run(TESTS, ini="loopguard_baseline = b.json\n")
    result.assert_outcomes(passed=1, failed=1)


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("{not json", "not JSON (*)"),
        ("[]", "expected a JSON object at the top, found list"),
        ('{"version": 7, "sites": []}', "unsupported version 7; expected 1"),
        ('{"version": 1}', "expected a list under 'sites'"),
        (
            '{"version": 1, "sites": [{"file": "app.py"}]}',
            "sites[[]0[]] is {'file': 'app.py'}; expected an object with non-empty string "
            "'file' and 'function'",
        ),
    ],
)
def test_malformed_baseline_is_a_usage_error_naming_the_file(pytester, inner, content, problem):
    (pytester.path / "b.json").write_text(content)
    result = inner.run(TESTS, "--loopguard-baseline=b.json", inprocess=True)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [f"*loopguard: invalid baseline file {pytester.path}/b.json: {problem}"]
    )


def test_malformed_baseline_is_not_overwritten_by_update(pytester, inner):
    (pytester.path / "b.json").write_text("precious notes")
    result = inner.run(
        TESTS, "--loopguard-baseline=b.json", "--loopguard-baseline-update", inprocess=True
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert (pytester.path / "b.json").read_text() == "precious notes"


def test_missing_baseline_is_a_usage_error(inner):
    result = inner.run(TESTS, "--loopguard-baseline=nope.json", inprocess=True)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*baseline file */nope.json does not exist; create it with --loopguard-baseline-update*"]
    )


def test_update_without_a_path_is_a_usage_error(inner):
    result = inner.run(TESTS, "--loopguard-baseline-update", inprocess=True)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*--loopguard-baseline-update needs the baseline's path: --loopguard-baseline=PATH*"]
    )


def test_under_xdist_the_baseline_is_applied_in_the_workers(pytester, inner):
    (pytester.path / "b.json").write_text(
        json.dumps({"version": 1, "sites": [{"file": "app.py", "function": "slow_a"}]})
    )
    result = inner.run(TESTS, "--loopguard-baseline=b.json", "-n", "2")
    result.assert_outcomes(passed=1, failed=1)
    assert "did not block in this run" not in result.stdout.str()


def test_under_xdist_the_controller_writes_reports_covering_every_worker(pytester, inner):
    result = inner.run(
        TESTS,
        "--loopguard-json=r.json",
        "--loopguard-baseline=b.json",
        "--loopguard-baseline-update",
        "-n",
        "2",
    )
    assert result.ret in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED), result.stderr.str()
    report = json.loads((pytester.path / "r.json").read_text())
    functions = sorted(e["site"]["function"] for e in report["events"])
    # Each worker's block exactly once.
    assert functions == ["slow_a", "slow_b"], functions
    baseline = json.loads((pytester.path / "b.json").read_text())
    assert sorted(site["function"] for site in baseline["sites"]) == ["slow_a", "slow_b"]


def test_under_xdist_fixed_sites_come_from_every_worker(pytester, inner):
    (pytester.path / "b.json").write_text(
        json.dumps(
            {
                "version": 1,
                "sites": [
                    {"file": "app.py", "function": "slow_a"},
                    {"file": "gone.py", "function": "f"},
                ],
            }
        )
    )
    result = inner.run(TESTS, "--loopguard-baseline=b.json", "-n", "2")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        ["*1 failed, 1 baselined", "*did not block in this run*", "    gone.py in f"]
    )
    assert "    app.py in slow_a" not in result.stdout.str()
