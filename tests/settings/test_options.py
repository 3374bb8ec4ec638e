"""Every source of the threshold, their precedence, and every invalid value."""

import pytest

BLOCK_150 = """
import asyncio, time
import pytest

@pytest.mark.asyncio
async def test_blocks_150ms():
    time.sleep(0.15)
"""


def test_default_threshold_is_100ms(inner):
    result = inner.run(BLOCK_150)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["loopguard: threshold 100 ms, *", "*(threshold 100 ms)*"])


def test_command_line_threshold(inner):
    result = inner.run(BLOCK_150, "--loopguard-threshold=500ms", inprocess=True)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["loopguard: threshold 500 ms (from --loopguard-threshold)*"])


def test_ini_threshold(inner):
    result = inner.run(BLOCK_150, ini="loopguard_threshold = 0.5s\n", inprocess=True)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["loopguard: threshold 500 ms (from loopguard_threshold)*"])


def test_env_threshold(inner, monkeypatch):
    monkeypatch.setenv("LOOPGUARD_THRESHOLD", "0.5")
    result = inner.run(BLOCK_150, inprocess=True)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["loopguard: threshold 500 ms (from LOOPGUARD_THRESHOLD)*"])


def test_env_beats_ini(inner, monkeypatch):
    monkeypatch.setenv("LOOPGUARD_THRESHOLD", "500ms")
    result = inner.run(BLOCK_150, ini="loopguard_threshold = 50ms\n", inprocess=True)
    result.assert_outcomes(passed=1)


def test_command_line_beats_env_and_ini(inner, monkeypatch):
    monkeypatch.setenv("LOOPGUARD_THRESHOLD", "500ms")
    result = inner.run(BLOCK_150, "--loopguard-threshold=50ms", ini="loopguard_threshold = 500ms\n")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*(threshold 50 ms)*"])


def test_marker_beats_command_line(inner):
    result = inner.run(
        """
import asyncio, time
import pytest

@pytest.mark.asyncio
@pytest.mark.loopguard(threshold="1s")
async def test_lenient():
    time.sleep(0.15)

@pytest.mark.asyncio
@pytest.mark.loopguard(threshold=0.05)
async def test_strict():
    time.sleep(0.15)
""",
        "--loopguard-threshold=500ms",
    )
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*(threshold 50 ms)*", "FAILED test_it.py::test_strict*"])


def test_class_marker_applies_to_methods(inner):
    result = inner.run(
        """
import asyncio, time
import pytest

@pytest.mark.loopguard(threshold="1s")
class TestLenient:
    @pytest.mark.asyncio
    async def test_method(self):
        time.sleep(0.15)
""",
        inprocess=True,
    )
    result.assert_outcomes(passed=1)


@pytest.mark.parametrize("value", ["abc", "-5ms", "0", "5 parsecs"])
def test_invalid_command_line_value_is_a_usage_error(inner, value):
    result = inner.run(BLOCK_150, f"--loopguard-threshold={value}", inprocess=True)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            f"*loopguard: invalid value for --loopguard-threshold: '{value}' "
            "(from the command line); expected a positive duration such as 100ms*"
        ]
    )


@pytest.mark.parametrize("value", ["abc", "-5ms", "0"])
def test_invalid_ini_value_is_a_usage_error(pytester, inner, value):
    result = inner.run(BLOCK_150, ini=f"loopguard_threshold = {value}\n", inprocess=True)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            f"*invalid value for loopguard_threshold: '{value}' "
            f"(from the config file {pytester.path / 'tox.ini'})*"
        ]
    )


@pytest.mark.parametrize("value", ["abc", "-5ms", "0", ""])
def test_invalid_env_value_is_a_usage_error(inner, monkeypatch, value):
    monkeypatch.setenv("LOOPGUARD_THRESHOLD", value)
    result = inner.run(BLOCK_150, inprocess=True)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [f"*invalid value for LOOPGUARD_THRESHOLD: '{value}' (from the environment)*"]
    )


@pytest.mark.parametrize(
    ("marker", "message"),
    [
        ('threshold="abc"', "*invalid value for threshold: 'abc' (from @pytest.mark.loopguard*"),
        ("threshold=-1", "*invalid value for threshold: -1 (from @pytest.mark.loopguard*"),
        ('"50ms"', "*takes keyword arguments only*"),
        ("treshold=1", "*unknown @pytest.mark.loopguard argument(s) treshold*"),
        ('enabled="no"', "*invalid value for enabled: 'no'*expected True or False*"),
    ],
)
def test_invalid_marker_arguments_are_usage_errors(inner, marker, message):
    result = inner.run(
        f"""
import pytest

@pytest.mark.loopguard({marker})
def test_marked():
    pass
""",
        inprocess=True,
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])
    assert "test_it.py::test_marked" in result.stderr.str()


def test_invalid_sampler_is_a_usage_error(inner):
    result = inner.run(BLOCK_150, "--loopguard-sampler=fast", inprocess=True)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*invalid value for --loopguard-sampler: 'fast' (from the command line)*"]
    )


def test_marker_is_registered_with_its_signature(inner):
    result = inner.run(None, "--markers", inprocess=True)
    result.stdout.fnmatch_lines(
        [
            "@pytest.mark.loopguard(threshold=None, enabled=True, mode=None, allow=(), "
            "max_lag=None, native=None):*"
        ]
    )


@pytest.mark.linux_full  # selects the GIL-free reader
def test_the_command_line_sampler_beats_the_environment(inner, monkeypatch):
    monkeypatch.setenv("LOOPGUARD_SAMPLER", "gil")
    result = inner.run("def test_x():\n    pass\n", "--loopguard-sampler=native", inprocess=True)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["loopguard: threshold 100 ms, GIL-free stack capture*"])
    # Without the option, the environment's choice stands.
    result = inner.run(None, inprocess=True)
    result.stdout.fnmatch_lines(["loopguard: threshold 100 ms, stacks read by taking the GIL*"])
