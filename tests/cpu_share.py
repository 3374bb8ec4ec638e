"""A CPU shared with processes that spin on it: a thread pinned there gets a share of it and
waits in the run queue the rest of the time, so its CPU work takes longer on the clock.

The tests of waiting for a CPU (``--loopguard-cpu-wait``) need one. Inner sessions get this
module as ``cpu_share.py`` (``CPU_SHARE_FILES``); tests in this process import it.
"""

import contextlib
import os
import pathlib
import subprocess
import sys
import time

import pytest

CPU_SHARE_FILES = {"cpu_share": pathlib.Path(__file__).read_text()}

MARKS = [
    pytest.mark.single_version,
    pytest.mark.linux_full,
    pytest.mark.skipif(
        not os.path.exists(f"/proc/self/task/{os.getpid()}/schedstat"),
        reason="this kernel does not report run-queue time",
    ),
]
"""The marks of a module of such tests: the kernel must report the time a thread waits for a
CPU."""

SPIN = "import os; os.sched_setaffinity(0, {%d}); print('ready', flush=True)\nwhile 1: pass"


def last_cpu():
    """The CPU to share: the last this process may run on."""
    return max(os.sched_getaffinity(0))


@contextlib.contextmanager
def spinning(cpu, count=1):
    """``count`` processes spinning on ``cpu``, each pinned there and ready, until the block
    ends."""
    procs = []
    try:
        for _ in range(count):
            procs.append(
                subprocess.Popen([sys.executable, "-c", SPIN % cpu], stdout=subprocess.PIPE)
            )
        for p in procs:
            assert p.stdout.readline() == b"ready\n"
        yield
    finally:
        for p in procs:
            p.kill()
            p.wait()


@contextlib.contextmanager
def pinned(cpu):
    """The calling thread (only) pinned to ``cpu`` until the block ends."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def burn(seconds):
    """``seconds`` of the calling thread's CPU time, in pure Python."""
    t = time.thread_time()
    while time.thread_time() - t < seconds:  # the work
        pass
