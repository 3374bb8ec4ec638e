"""Allowlists (ini, marker and ``guard(allow=...)``) and ``loopguard_scan``."""

import asyncio
import time

import loopguard
import pytest

pytestmark = pytest.mark.single_version

APP = {
    "app/__init__": "",
    "app/startup": """
import time

def load_model():
    time.sleep(0.3)  # allowed by module:function

def warm_cache():
    time.sleep(0.3)  # not allowed
""",
    "app/config": """
import time

def read_config():
    time.sleep(0.3)  # allowed by path or path:function
""",
}

TESTS = """
import asyncio, time
import pytest
from app import config, startup

@pytest.mark.asyncio
async def test_load_model():
    startup.load_model()

@pytest.mark.asyncio
async def test_warm_cache():
    startup.warm_cache()

@pytest.mark.asyncio
async def test_read_config():
    config.read_config()

@pytest.mark.asyncio
async def test_direct_sleep():
    time.sleep(0.3)
"""


INNER = dict(files=APP)


def failed(result):
    return sorted(
        line.split("::")[1].split()[0]
        for line in result.outlines
        if line.startswith("FAILED test_it.py::")
    )


def test_without_allow_patterns_every_block_fails(inner):
    result = inner.run(TESTS)
    result.assert_outcomes(failed=4)


@pytest.mark.parametrize(
    ("patterns", "still_failing"),
    [
        (["app.startup:load_model"], ["test_direct_sleep", "test_read_config", "test_warm_cache"]),
        (["app.startup"], ["test_direct_sleep", "test_read_config"]),
        (["app.*:*_model"], ["test_direct_sleep", "test_read_config", "test_warm_cache"]),
        (["app/config.py"], ["test_direct_sleep", "test_load_model", "test_warm_cache"]),
        (["app/*.py"], ["test_direct_sleep"]),
        (
            ["app/*.py:read_*", "test_it.py:test_direct_sleep"],
            ["test_load_model", "test_warm_cache"],
        ),
    ],
)
def test_ini_allow_patterns_of_each_form(inner, patterns, still_failing):
    ini = "loopguard_allow =\n" + "".join(f"    {p}\n" for p in patterns)
    result = inner.run(TESTS, ini=ini)
    assert failed(result) == still_failing
    result.stdout.fnmatch_lines([f"*{4 - len(still_failing)} allowed"])


def test_an_allow_pattern_matches_any_frame_of_the_stack(inner):
    # Allowing the test function allows what it calls.
    result = inner.run(TESTS, ini="loopguard_allow = test_it:test_load_model\n")
    assert "test_load_model" not in failed(result)


def test_marker_allow(inner):
    tests = TESTS.replace(
        "async def test_warm_cache",
        '@pytest.mark.loopguard(allow=["app.startup:warm_cache"])\nasync def test_warm_cache',
    )
    result = inner.run(tests)
    assert failed(result) == ["test_direct_sleep", "test_load_model", "test_read_config"]


def test_allowed_blocks_are_counted_not_listed_in_the_summary(inner):
    result = inner.run(TESTS, ini="loopguard_allow = app/*.py\n")
    result.stdout.fnmatch_lines(["4 blocks at 4 call sites in 4 tests, * 1 failed, 3 allowed"])
    assert "load_model  " not in result.stdout.str()


def test_scan_restricts_judging_to_the_given_packages(inner):
    result = inner.run(TESTS, ini="loopguard_scan = app otherpkg\n")
    # The direct sleep in the test module is outside 'app': allowed.
    assert failed(result) == ["test_load_model", "test_read_config", "test_warm_cache"]
    result.stdout.fnmatch_lines(["loopguard: *scanning app, otherpkg*"])


def test_scan_and_allow_together(inner):
    result = inner.run(TESTS, ini="loopguard_scan = app\nloopguard_allow = app.config\n")
    assert failed(result) == ["test_load_model", "test_warm_cache"]


@pytest.mark.parametrize(
    ("pattern", "problem"),
    [
        ("app.startup:", "nothing after ':'"),
        (":load_model", "no module or path before ':'"),
        ("app startup", "'app startup' is neither a dotted module name nor a path to a .py file"),
        ("app.startup:load model", "'load model' is not a function name"),
    ],
)
def test_invalid_ini_allow_pattern_is_a_usage_error(inner, pattern, problem):
    result = inner.run(TESTS, ini=f"loopguard_allow = {pattern}\n", inprocess=True)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            f"*loopguard: invalid allow pattern {pattern!r} (from loopguard_allow in the config "
            f"file *tox.ini): {problem}; expected module:function, module, path/glob.py or "
            "path/glob.py:function*"
        ]
    )


@pytest.mark.parametrize(
    ("marker", "message"),
    [
        (
            "allow=42",
            "*invalid value for allow: 42 (from @pytest.mark.loopguard on "
            "test_it.py::test_marked); expected a list of patterns*",
        ),
        (
            'allow=["a:"]',
            "*invalid allow pattern 'a:' (from @pytest.mark.loopguard on "
            "test_it.py::test_marked): nothing after ':'*",
        ),
        (
            "allow=[None]",
            "*invalid allow pattern None (from @pytest.mark.loopguard on "
            "test_it.py::test_marked): not a non-empty string*",
        ),
    ],
)
def test_invalid_marker_allow_is_a_usage_error(inner, marker, message):
    tests = f"import pytest\n\n@pytest.mark.loopguard({marker})\ndef test_marked():\n    pass\n"
    result = inner.run(tests, inprocess=True)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])


def test_invalid_scan_is_a_usage_error(inner):
    result = inner.run(TESTS, ini="loopguard_scan = app my-pkg\n", inprocess=True)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "*invalid value for loopguard_scan: 'my-pkg' (from the config file *tox.ini); "
            "expected package names separated by blanks*"
        ]
    )


# --- guard(allow=...) without the plugin ----------------------------------------------------


def allowed_sleep():
    time.sleep(0.3)


def test_guard_allow():
    async def main():
        allowed_sleep()

    with loopguard.guard(threshold="100ms", allow=[f"{__name__}:allowed_sleep"]) as g:
        asyncio.run(main())
    assert g.events == []
    assert [e.site.function for e in g.allowed] == ["allowed_sleep"]

    with pytest.raises(loopguard.LoopBlockedError):
        with loopguard.guard(threshold="100ms", allow=["some.other:thing"]):
            asyncio.run(main())


def test_guard_allow_path_pattern():
    async def main():
        allowed_sleep()

    with loopguard.guard(threshold="100ms", allow="*/test_allow.py:allowed_*") as g:
        asyncio.run(main())
    assert g.events == [] and len(g.allowed) == 1


def test_guard_invalid_allow_pattern():
    with pytest.raises(ValueError, match=r"invalid allow pattern 'x:' \(from loopguard.guard"):
        loopguard.guard(allow=["x:"])
