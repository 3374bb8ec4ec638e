"""``--loopguard-json``: the report validates against docs/report-schema.json."""

import json
import os
from pathlib import Path

import pytest
from loopguard import _native

pytestmark = pytest.mark.single_version

SCHEMA = json.loads(
    (Path(__file__).resolve().parents[2] / "docs" / "report-schema.json").read_text()
)

SOURCE = """
import asyncio, ctypes, threading, time
import pytest
from loopguard import _native

@pytest.mark.asyncio
async def test_fails():
    time.sleep(0.3)  # failing block

@pytest.mark.asyncio
@pytest.mark.loopguard(allow=["test_it:test_allowed"])
async def test_allowed():
    time.sleep(0.3)  # allowed block

@pytest.mark.asyncio
async def test_short():
    time.sleep(0.045)  # recorded block

@pytest.mark.asyncio
async def test_starved():
    usleep = ctypes.PyDLL(None).usleep
    def hog():
        # Takes the GIL once the loop waits in its selector (a hog that took it while the loop
        # was still in Thread.start would block the loop, not starve it), then holds it for
        # 0.6 s in a C call (ctypes.PyDLL does not release it): the loop, due back from its
        # selector at 0.6 s, waits for the GIL until 0.9 s.
        time.sleep(0.3)
        usleep(600_000)  # hog
    t = threading.Thread(target=hog, name="hog")
    t.start()
    await asyncio.sleep(0.6)
    t.join()

def test_no_loop():
    pass
"""


INNER = dict(args=("--loopguard-record-threshold=30ms",))


# --- a small JSON Schema validator (the subset docs/report-schema.json uses) ----------------

_TYPES = {
    "object": dict,
    "array": list,
    "string": str,
    "boolean": bool,
    "null": type(None),
}


def _is_type(value, name):
    if name == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if name == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, _TYPES[name])


def validate(value, schema, root=SCHEMA, path="$"):
    """Raise AssertionError naming the path of the first value that breaks ``schema``."""
    if "$ref" in schema:
        ref = schema["$ref"]
        assert ref.startswith("#/$defs/"), ref
        return validate(value, root["$defs"][ref.split("/")[-1]], root, path)
    if "anyOf" in schema:
        errors = []
        for option in schema["anyOf"]:
            try:
                validate(value, option, root, path)
                return None
            except AssertionError as e:
                errors.append(str(e))
        raise AssertionError(f"{path}: matches none of anyOf: {errors}")
    if "const" in schema:
        assert value == schema["const"], f"{path}: {value!r} != {schema['const']!r}"
    if "enum" in schema:
        assert value in schema["enum"], f"{path}: {value!r} not in {schema['enum']}"
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        assert any(_is_type(value, t) for t in types), f"{path}: {value!r} is not {types}"
    if "minimum" in schema and _is_type(value, "number"):
        assert value >= schema["minimum"], f"{path}: {value} < {schema['minimum']}"
    if isinstance(value, dict):
        for key in schema.get("required", []):
            assert key in value, f"{path}: missing {key!r}"
        for key, sub in schema.get("properties", {}).items():
            if key in value:
                validate(value[key], sub, root, f"{path}.{key}")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            validate(item, schema["items"], root, f"{path}[{i}]")
    return None


def test_validator_rejects_what_the_schema_forbids():
    with pytest.raises(AssertionError, match="missing 'environment'"):
        validate({"version": 1, "settings": {}}, SCHEMA)
    event = SCHEMA["$defs"]["event"]
    with pytest.raises(AssertionError, match=r"\$.outcome: 'ok' not in"):
        validate({"outcome": "ok"}, {"properties": event["properties"]})


# --- the report -----------------------------------------------------------------------------


def test_report_matches_the_schema_and_describes_every_block(pytester, inner):
    (pytester.path / "out").mkdir()
    result = inner.run(SOURCE, "--loopguard-json=out/report.json")
    result.assert_outcomes(failed=2, passed=3)
    path = pytester.path / "out" / "report.json"
    result.stdout.fnmatch_lines([f"loopguard: JSON report written to {path}"])
    data = json.loads(path.read_text())
    validate(data, SCHEMA)

    assert data["version"] == 1
    assert data["settings"]["threshold_ms"] == 100.0
    assert data["settings"]["record_threshold_ms"] == 30.0
    assert data["settings"]["mode"] == "fail"
    env = data["environment"]
    assert env["pytest"] == pytest.__version__
    assert env["loopguard"]
    assert env["python"].count(".") == 2

    # A loaded machine may add blocks that were only its wait for a CPU (recorded, with that
    # cause) wherever a loop ran: the session's own blocks are the others.
    by_test, load = {}, {}
    for ev in data["events"]:
        name = ev["test"].split("::")[1]
        if ev["cause"] == "cpu-wait" and ev["outcome"] == "recorded" and name != "test_short":
            load[name] = load.get(name, 0) + 1
            continue
        by_test.setdefault(name, []).append(ev)
    assert set(by_test) == {"test_fails", "test_allowed", "test_short", "test_starved"}

    (fails,) = by_test["test_fails"]
    assert fails["outcome"] == "failed"
    assert fails["severity"] == "MEDIUM"
    assert fails["phase"] == "call"
    assert fails["threshold_ms"] == 100.0
    assert 280 <= fails["duration_ms"] <= 2000
    assert fails["site"] == {
        "file": "test_it.py",
        "line": inner.line("# failing block"),
        "function": "test_fails",
        "source": "time.sleep(0.3)  # failing block",
    }
    assert fails["stack"][-1] == {k: fails["site"][k] for k in ("file", "line", "function")}
    assert fails["start_ms"] is not None
    (test_fails,) = [t for t in data["tests"] if t["test"].endswith("::test_fails")]
    setup, call = test_fails["phases"]["setup"], test_fails["phases"]["call"]
    assert setup[0] <= setup[1] <= call[0] <= fails["start_ms"] < call[1]
    assert [r["interrupted"] for r in data["runs"]] == [False]
    assert fails["thread"] == "MainThread"
    # Who holds the GIL is read on the full Linux build only (unknown on the portable path).
    gil_read = _native.portable() is None
    assert fails["gil"] in (("released", "loop") if gil_read else ("unknown",))

    (allowed,) = by_test["test_allowed"]
    assert allowed["outcome"] == "allowed"
    assert "test_it:test_allowed" in allowed["reason"]

    (short,) = by_test["test_short"]
    assert short["outcome"] == "recorded"
    assert short["severity"] == "MONITOR"

    starved = by_test["test_starved"][0]
    assert starved["outcome"] == "failed"
    if gil_read:
        # Starvation is told by who holds the GIL.
        assert starved["starved"] is True
        assert starved["gil"] == "other"
        # (The holder's name is looked up when the phase ends: this one had ended by then.)
        assert starved["gil_holder"]["thread"]
        # Its stack, from the sample the event shows: in usleep (hog's line is the innermost),
        # or still in ctypes' CDLL.__init__ if a loaded machine paused the thread there with
        # the GIL.
        holder = [f["function"] for f in starved["gil_holder"]["stack"]]
        assert any(f.endswith("hog") for f in holder[-2:]), holder
    else:
        assert starved["gil"] == "unknown"

    totals = {t["test"].split("::")[1]: t for t in data["tests"]}
    extra = load.get("test_fails", 0)
    assert totals["test_fails"]["events"] == 1 + extra
    assert totals["test_fails"]["outcomes"] == {
        "failed": 1,
        **({"recorded": extra} if extra else {}),
    }
    assert totals["test_fails"]["max_ms"] == fails["duration_ms"]
    assert data["totals"]["events"] == len(data["events"])
    assert data["totals"]["outcomes"]["allowed"] == 1
    assert "test_no_loop" not in totals
    # Every test ran with loopguard enabled, the one without a loop too.
    assert data["totals"]["guarded"] == 5
    assert [r["guarded"] for r in data["runs"]] == [5]


def test_ini_path_is_relative_to_the_ini_file(pytester, inner):
    result = inner.run(SOURCE, ini="loopguard_json = lg.json\n")
    result.assert_outcomes(failed=2, passed=3)
    validate(json.loads((pytester.path / "lg.json").read_text()), SCHEMA)


def test_report_is_written_atomically(pytester, inner):
    # Nothing but the final file is left in its directory (no temporary files).
    (pytester.path / "out").mkdir()
    inner.run(SOURCE, "--loopguard-json=out/report.json")
    assert os.listdir(pytester.path / "out") == ["report.json"]


def test_report_has_the_permissions_of_a_file_made_with_open(pytester, inner):
    # 0666 less the umask for a new file (not the temporary file's 0600); an existing file's
    # own permissions are kept.
    import stat

    old = os.umask(0o027)
    try:
        inner.run(SOURCE, "--loopguard-json=new.json")
        (pytester.path / "kept.json").write_text("{}")
        os.chmod(pytester.path / "kept.json", 0o604)
        inner.run(SOURCE, "--loopguard-json=kept.json")
    finally:
        os.umask(old)
    assert stat.S_IMODE((pytester.path / "new.json").stat().st_mode) == 0o640
    assert stat.S_IMODE((pytester.path / "kept.json").stat().st_mode) == 0o604


def test_a_report_without_blocks_is_still_written(pytester, inner):
    result = inner.using(args=()).run(
        "def test_ok():\n    pass\n", "--loopguard-json=r.json", inprocess=True
    )
    result.assert_outcomes(passed=1)
    data = json.loads((pytester.path / "r.json").read_text())
    validate(data, SCHEMA)
    assert data["events"] == [] and data["tests"] == []


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("missing/report.json", "the directory * does not exist"),
        (".", "it is a directory, expected a file path"),
        ("ro/report.json", "cannot write in *"),
    ],
)
def test_unwritable_path_is_a_usage_error_at_start_up(pytester, inner, value, problem):
    ro = pytester.path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    if value.startswith("ro/") and os.access(ro, os.W_OK):
        pytest.skip("running as a user who can write anywhere")
    try:
        result = inner.run(SOURCE, f"--loopguard-json={value}", inprocess=True)
    finally:
        ro.chmod(0o700)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [f"*invalid value for --loopguard-json: '*' (from the command line); {problem}*"]
    )
    assert "collected" not in result.stdout.str()
