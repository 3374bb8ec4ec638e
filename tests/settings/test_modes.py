"""``--loopguard-mode``: fail (default), warn (a LoopBlockedWarning) or record; every source."""

import pytest

pytestmark = pytest.mark.single_version

BLOCKS = """
import asyncio, time
import pytest

@pytest.mark.asyncio
async def test_blocks():
    time.sleep(0.3)  # the blocking line
"""


def test_fail_is_the_default(inner):
    result = inner.run(BLOCKS)
    result.assert_outcomes(failed=1)


def test_warn_mode_passes_with_a_loop_blocked_warning_at_the_blocking_line(inner):
    result = inner.run(BLOCKS, "--loopguard-mode=warn")
    result.assert_outcomes(passed=1, warnings=1)
    n = inner.line("# the blocking line")
    result.stdout.fnmatch_lines(
        [
            "loopguard: mode warn (from --loopguard-mode)*",
            "*warnings summary*",
            "test_it.py::test_blocks",
            f"*test_it.py:{n}: LoopBlockedWarning: loopguard: event loop blocked for * "
            f"(threshold 100 ms) at test_it.py:{n} in test_blocks",
        ]
    )


def test_warnings_filter_error_turns_warn_mode_back_into_failures(inner):
    result = inner.run(BLOCKS, "--loopguard-mode=warn", "-W", "error::loopguard.LoopBlockedWarning")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["*loopguard: event loop blocked for*", "FAILED test_it.py::test_blocks - loopguard: *"]
    )


def test_filterwarnings_marker_applies_to_the_warning(inner):
    source = BLOCKS.replace(
        "@pytest.mark.asyncio",
        '@pytest.mark.filterwarnings("ignore::loopguard.LoopBlockedWarning")\n@pytest.mark.asyncio',
    )
    result = inner.run(source, "--loopguard-mode=warn")
    result.assert_outcomes(passed=1)
    assert "LoopBlockedWarning" not in result.stdout.str()


def test_filterwarnings_ini_error_fails_the_test(inner):
    result = inner.run(
        BLOCKS,
        "--loopguard-mode=warn",
        ini="filterwarnings =\n    error::loopguard.LoopBlockedWarning\n",
    )
    result.assert_outcomes(failed=1)


def test_record_mode_passes_and_lists_the_block_in_the_summary(inner):
    result = inner.run(BLOCKS, "--loopguard-mode=record")
    result.assert_outcomes(passed=1)
    assert "LoopBlockedWarning" not in result.stdout.str()
    n = inner.line("# the blocking line")
    result.stdout.fnmatch_lines(
        [
            "*loopguard: blocking hotspots*",
            f"MEDIUM * 1 * 1 * recorded  test_it.py:{n} in test_blocks  time.sleep(0.3)*",
        ]
    )


def test_ini_mode(inner):
    result = inner.run(BLOCKS, ini="loopguard_mode = record\n")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["loopguard: mode record (from loopguard_mode)*"])


def test_env_mode_and_command_line_beats_it(inner, monkeypatch):
    monkeypatch.setenv("LOOPGUARD_MODE", "record")
    result = inner.run(BLOCKS)
    result.assert_outcomes(passed=1)
    result = inner.run(BLOCKS, "--loopguard-mode=fail")
    result.assert_outcomes(failed=1)


def test_marker_mode_beats_the_command_line(inner):
    source = BLOCKS.replace(
        "@pytest.mark.asyncio", '@pytest.mark.loopguard(mode="fail")\n@pytest.mark.asyncio'
    )
    result = inner.run(source, "--loopguard-mode=record")
    result.assert_outcomes(failed=1)


def test_a_block_in_setup_warns_too(inner):
    source = """
import time
import pytest, pytest_asyncio

@pytest_asyncio.fixture
async def slow():
    time.sleep(0.3)
    yield

@pytest.mark.asyncio
async def test_uses_it(slow):
    pass
"""
    result = inner.run(source, "--loopguard-mode=warn")
    result.assert_outcomes(passed=1, warnings=1)


@pytest.mark.parametrize(
    ("args", "env", "ini", "message"),
    [
        (
            ["--loopguard-mode=loud"],
            None,
            "",
            "*invalid value for --loopguard-mode: 'loud' (from the command line); "
            "expected one of fail, raise, warn, record*",
        ),
        (
            [],
            "nope",
            "",
            "*invalid value for LOOPGUARD_MODE: 'nope' (from the environment); expected one of*",
        ),
        (
            [],
            None,
            "loopguard_mode = quiet\n",
            "*invalid value for loopguard_mode: 'quiet' (from the config file *tox.ini); "
            "expected one of*",
        ),
    ],
)
def test_invalid_mode_is_a_usage_error(inner, monkeypatch, args, env, ini, message):
    if env is not None:
        monkeypatch.setenv("LOOPGUARD_MODE", env)
    result = inner.run(BLOCKS, *args, ini=ini, inprocess=True)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])


def test_invalid_marker_mode_is_a_usage_error(inner):
    source = BLOCKS.replace(
        "@pytest.mark.asyncio", '@pytest.mark.loopguard(mode="loud")\n@pytest.mark.asyncio'
    )
    result = inner.run(source, inprocess=True)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "*invalid value for mode: 'loud' (from @pytest.mark.loopguard on "
            "test_it.py::test_blocks); expected one of fail, raise, warn, record*"
        ]
    )
