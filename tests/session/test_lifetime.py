"""The watchdog's life: fallback when memory cannot be read, fork(), interpreter shutdown."""

import os
import re
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.interpreter


def test_without_process_vm_readv_stacks_are_read_with_the_gil_and_marked_late(inner, monkeypatch):
    monkeypatch.setenv("LOOPGUARD_DISABLE_VM_READV", "1")
    result = inner.run("""
import asyncio, time, pytest

@pytest.mark.asyncio
async def test_sleepy():
    time.sleep(0.3)  # blocking
""")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "loopguard: threshold 100 ms, stacks read by taking the GIL (may be late)",
            inner.site("# blocking", "test_sleepy"),
            "*(read with the GIL: it may show where the loop was after the block)*",
        ]
    )


def test_native_sampler_required_but_unavailable_is_a_usage_error(inner, monkeypatch):
    monkeypatch.setenv("LOOPGUARD_DISABLE_VM_READV", "1")
    result = inner.run("def test_x():\n    pass\n", "--loopguard-sampler=native")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*loopguard: cannot start the watchdog:*process_vm_readv*"])


BLOCKS_TWICE = """
import asyncio, time, pytest

@pytest.mark.asyncio
async def test_one():
    time.sleep(0.6)

@pytest.mark.asyncio
async def test_two():
    time.sleep(0.6)
"""


def test_an_unknown_python_says_why_in_the_header_and_once_in_the_summary(inner, monkeypatch):
    monkeypatch.setenv("LOOPGUARD_SIMULATE_PYTHON", "3.16")
    result = inner.run(BLOCKS_TWICE)
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(
        [
            "loopguard: threshold 100 ms, stacks read by taking the GIL (may be late)",
            "loopguard: the GIL-free stack reader is off: Python 3.16 is not supported by the "
            "GIL-free reader (3.10 to 3.15 are); a block in C code that holds the GIL*",
        ]
    )
    # Once, counting the blocks whose stack was read by taking the GIL (on a very busy machine
    # a block can end before it is sampled at all).
    summary = [t for t in result.outlines if "captured late" in t]
    assert len(summary) == 1, summary
    assert re.fullmatch(
        r"loopguard: (1 block was|2 blocks were) captured late, by taking the GIL: the GIL-free "
        r"stack reader is off \(Python 3\.16 is not supported by the GIL-free reader "
        r"\(3\.10 to 3\.15 are\)\)",
        summary[0],
    ), summary


def test_a_denied_system_call_is_named_in_the_header(inner, monkeypatch):
    monkeypatch.setenv("LOOPGUARD_DISABLE_VM_READV", "1")
    result = inner.run("def test_x():\n    pass\n")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        ["loopguard: the GIL-free stack reader is off: the system call process_vm_readv is "
         "denied here (errno 1; a seccomp sandbox*"]
    )  # fmt: skip
    # Nothing blocked: nothing was late, and the summary says nothing about it.
    assert not [t for t in result.outlines if "captured late" in t]


def test_choosing_the_gil_sampler_is_not_reported_as_a_fallback(inner):
    result = inner.run(BLOCKS_TWICE, "--loopguard-sampler=gil")
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(["loopguard: threshold 100 ms, stacks read by taking the GIL*"])
    assert "reader is off" not in result.stdout.str()


def test_native_sampler_on_an_unknown_python_is_a_usage_error_naming_it(inner, monkeypatch):
    monkeypatch.setenv("LOOPGUARD_SIMULATE_PYTHON", "3.16")
    result = inner.run("def test_x():\n    pass\n", "--loopguard-sampler=native")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*loopguard: cannot start the watchdog:*Python 3.16*"])


def _run_script(source, timeout=60):
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(source)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_forked_child_starts_clean_and_the_parent_keeps_watching():
    proc = _run_script(
        """
        import asyncio, os, time, loopguard

        async def block():
            time.sleep(0.3)

        with loopguard.guard(threshold="100ms", raise_=False) as g:
            pid = os.fork()
            if pid == 0:
                # The child has no watchdog thread; running a loop must just work.
                asyncio.run(block())
                with loopguard.guard(threshold="100ms", raise_=False) as child:
                    asyncio.run(block())
                os._exit(0 if len(child.events) == 1 else 3)
            _, status = os.waitpid(pid, 0)
            asyncio.run(block())
        print("child", status >> 8)
        print("parent events", len(g.events))
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert "child 0" in proc.stdout, proc.stdout + proc.stderr
    assert "parent events 1" in proc.stdout


def test_interpreter_exit_with_a_loop_blocked_in_a_daemon_thread_is_clean():
    proc = _run_script(
        """
        import asyncio, threading, time, loopguard

        def forever():
            async def spin():
                while True:
                    time.sleep(0.05)  # blocks the loop, over and over
                    x = sum(range(100_000))
            asyncio.run(spin())

        g = loopguard.guard(threshold="20ms", raise_=False)
        g.__enter__()
        threading.Thread(target=forever, daemon=True).start()
        time.sleep(0.5)
        print("exiting")
        """,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "exiting" in proc.stdout
    assert "Fatal" not in proc.stderr and "Segmentation" not in proc.stderr, proc.stderr
