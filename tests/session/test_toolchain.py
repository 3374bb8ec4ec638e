"""The rest of the toolchain: coverage, timeouts, random order, logging capture, thread checks."""

import pytest
from conftest import SLOW_PLUGINS

HEADER = """
import asyncio, logging, threading, time
import pytest
"""


INNER = dict(header=HEADER, plugins=SLOW_PLUGINS)


BLOCKING = """
def crunch(seconds):
    end = time.thread_time() + seconds  # CPU time: the same work on a busy machine
    n = 0
    while time.thread_time() < end:  # hot loop
        n += 1
    return n

@pytest.mark.asyncio
async def test_sleeps():
    await asyncio.sleep(0)
    time.sleep(0.3)  # sleep block

@pytest.mark.asyncio
async def test_crunches():
    crunch(0.4)

@pytest.mark.asyncio
async def test_fine():
    await asyncio.sleep(0.01)
"""


def test_coverage_tracer_does_not_hide_blocks_or_move_the_line(inner):
    pytest.importorskip("pytest_cov")
    result = inner.run(BLOCKING, "--cov", "--cov-branch", "--cov-report=term", "-rA")
    result.assert_outcomes(failed=2, passed=1)
    hot = inner.line("# hot loop")
    result.stdout.re_match_lines_random(
        [
            rf".*test_it\.py:{inner.line('# sleep block')} in test_sleeps",
            rf".*test_it\.py:({hot}|{hot + 1}) in crunch",
            r"FAILED test_it.py::test_sleeps - loopguard: .* at .*",
            r"FAILED test_it.py::test_crunches - loopguard: .* at .*",
            r"PASSED test_it.py::test_fine",
            r"TOTAL .*",  # coverage's report is there too
        ]
    )


def test_timeout_while_the_loop_is_blocked_signal_method(inner):
    pytest.importorskip("pytest_timeout")
    result = inner.run(
        """
@pytest.mark.asyncio
async def test_hangs():
    time.sleep(5)  # hanging call

@pytest.mark.asyncio
async def test_after():
    await asyncio.sleep(0.01)
""",
        "--timeout=1",
        "--timeout-method=signal",
        "-rA",
    )
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines_random(
        [
            "*Timeout (>1.0s) from pytest-timeout*",
            # The test failed on its own (the timeout); loopguard adds the block as a section.
            "*loopguard: blocked event loop (call)*",
            inner.site("# hanging call", "*test_hangs"),
            "PASSED test_it.py::test_after",
        ]
    )
    assert result.duration < 30


def test_timeout_while_the_loop_is_blocked_thread_method(inner):
    pytest.importorskip("pytest_timeout")
    # The thread method dumps every thread's stack and ends the process with os._exit.
    result = inner.run(
        """
@pytest.mark.asyncio
async def test_hangs():
    time.sleep(5)  # hanging call
""",
        "--timeout=1",
        "--timeout-method=thread",
    )
    assert result.ret != 0
    result.stdout.fnmatch_lines(["*Timeout*"])
    output = result.stdout.str() + result.stderr.str()
    assert "Fatal Python error" not in output
    assert "Segmentation fault" not in output
    # Its dump lists Python threads only: the loop's, not loopguard's watchdog.
    assert output.count("~ Stack of ") == 1, output
    assert result.duration < 30


def test_random_order_keeps_attribution(inner):
    pytest.importorskip("pytest_randomly")
    source = "\n".join(
        f"""
@pytest.mark.asyncio
async def test_{i}():
    await asyncio.sleep(0)
    time.sleep({0.3 if i % 2 else 0.0})  # line of test_{i}
"""
        for i in range(6)
    )
    for seed in ("1", "2"):
        result = inner.run(source, "-rA", f"--randomly-seed={seed}", keep_order=False)
        result.assert_outcomes(failed=3, passed=3)
        result.stdout.fnmatch_lines(["*randomly-seed=" + seed + "*"])
        for i in (1, 3, 5):
            result.stdout.fnmatch_lines_random(
                [
                    f"FAILED test_it.py::test_{i} - loopguard: * at *",
                    f"*test_it.py:{inner.line(f'# line of test_{i}')} in test_{i}",
                ]
            )


def test_logging_capture(inner):
    result = inner.run(
        """
log = logging.getLogger("app")

@pytest.mark.asyncio
async def test_logs_and_blocks(caplog):
    caplog.set_level(logging.INFO)
    log.info("before the block")
    time.sleep(0.3)  # logged block
    log.info("after the block")
    assert [r.getMessage() for r in caplog.records if r.name == "app"] == [
        "before the block", "after the block"
    ]

@pytest.mark.asyncio
async def test_logs_fine(caplog):
    caplog.set_level(logging.INFO)
    log.info("all good")
    await asyncio.sleep(0)
    assert "all good" in caplog.text
""",
        "--log-level=INFO",
        "-rA",
    )
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines_random(
        [
            inner.site("# logged block", "test_logs_and_blocks"),
            "FAILED test_it.py::test_logs_and_blocks - loopguard: * at *",
            "PASSED test_it.py::test_logs_fine",
        ]
    )
    # The captured log of the failing test is still shown next to loopguard's report.
    result.stdout.fnmatch_lines(["*Captured log call*", "*before the block*", "*after the block*"])


def test_live_logging(inner):
    result = inner.run(
        """
@pytest.mark.asyncio
async def test_logs_and_blocks():
    logging.getLogger("app").warning("live message")
    time.sleep(0.3)  # live block
""",
        "--log-cli-level=WARNING",
    )
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["*live message*", inner.site("# live block", "test_logs_and_blocks")]
    )


@pytest.mark.parametrize("sampler", ["auto", "gil"])
def test_watchdog_thread_is_invisible_to_threading(inner, sampler):
    result = inner.run(
        """
@pytest.mark.asyncio
@pytest.mark.loopguard(enabled=False)
async def test_block_so_the_watchdog_samples():
    time.sleep(0.3)

def test_no_threads_but_main():
    assert threading.enumerate() == [threading.main_thread()]
    assert threading.active_count() == 1

@pytest.mark.asyncio
async def test_no_threads_but_main_inside_a_loop():
    await asyncio.sleep(0.01)
    assert threading.enumerate() == [threading.main_thread()]
""",
        f"--loopguard-sampler={sampler}",
    )
    result.assert_outcomes(passed=3)


@pytest.mark.parametrize("phase", ["setup", "call", "teardown"])
def test_a_failure_raised_by_another_plugins_hook_does_not_show_loopguards_frames(inner, phase):
    # pytest's unraisable-exception check fails the test from its own hook wrapper, outside
    # loopguard's: loopguard's wrappers must not appear as the failing frame.
    body = {
        "setup": "@pytest.fixture\ndef boom():\n    Boom()\n\ndef test_it(boom):\n    pass\n",
        "call": "def test_it():\n    Boom()\n",
        "teardown": "@pytest.fixture\ndef boom():\n    yield\n    Boom()\n\n"
        "def test_it(boom):\n    pass\n",
    }[phase]
    result = inner.run(
        'class Boom:\n    def __del__(self):\n        raise RuntimeError("boom in __del__")\n\n'
        + body,
        "-W",
        "error::pytest.PytestUnraisableExceptionWarning",
    )
    out = result.stdout.str()
    assert "PytestUnraisableExceptionWarning" in out
    assert "boom in __del__" in out
    assert "loopguard/plugin.py" not in out and "result = yield" not in out, out
