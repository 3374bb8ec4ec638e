"""A block at the bottom of a deep recursion: the stack is read whole (up to the samplers' caps),
the recursion folded as CPython's traceback folds it, the test's own line in view, and a stack
deeper than the caps says how many frames were not read."""

import json
import re

import pytest

# How deep stacks are laid out differs by version: run under every CPython.
pytestmark = pytest.mark.interpreter

# The samplers: the GIL-free reader and the one that takes the GIL.
SAMPLERS = [pytest.param("auto", marks=pytest.mark.linux_full), "gil"]

# What is tested is the stack: a block is failed even if a busy machine delayed it.
INNER = {"args": ("--loopguard-cpu-wait=include",)}

CORO = """
import sys
import time

import pytest


async def dig(n):
    if n == 0:
        time.sleep(0.3)  # blocks at the bottom
        return
    await dig(n - 1)  # recurses


@pytest.mark.asyncio
async def test_deep():
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(10_000)
    try:
        await dig(3000)  # the test's own line
    finally:
        sys.setrecursionlimit(old)
"""


def repeated(result):
    """The counts of the ``[Previous line repeated N more times]`` lines, in order."""
    return [int(n) for n in re.findall(r"\[Previous line repeated (\d+) more times\]", result)]


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_a_block_under_a_deep_coroutine_recursion_shows_the_test_and_the_fold(inner, sampler):
    result = inner.run(CORO, f"--loopguard-sampler={sampler}", "--loopguard-json=report.json")
    inner.assert_blocked_at(result, "# blocks at the bottom", "dig")
    result.stdout.fnmatch_lines(
        [
            "  Python stack of the loop thread (most recent call last):",
            "    ... * outer frames (test runner and event loop) not shown ...",
            f'    File "test_it.py", line {inner.line("# the test")}, in test_deep',
            "      await dig(3000)  # the test's own line",
            f'    File "test_it.py", line {inner.line("# recurses")}, in dig',
            "      await dig(n - 1)  # recurses",
            f'    File "test_it.py", line {inner.line("# recurses")}, in dig',
            "      await dig(n - 1)  # recurses",
            f'    File "test_it.py", line {inner.line("# recurses")}, in dig',
            "      await dig(n - 1)  # recurses",
            "    [[]Previous line repeated * more times]",
            f'    File "test_it.py", line {inner.line("# blocks")}, in dig',
            "      time.sleep(0.3)  # blocks at the bottom",
        ],
        consecutive=True,
    )
    out = result.stdout.str()
    # 3,000 frames of dig at the recursive line: three shown, 2,997 folded.
    assert repeated(out) == [2997]
    assert "frames not read" not in out
    # The JSON report writes the run once, with its length.
    (event,) = json.loads((inner.pytester.path / "report.json").read_text())["events"]
    runs = [f["repeat"] for f in event["stack"] if "repeat" in f]
    assert runs == [{"frames": 1, "times": 3000}]
    assert event["stack"][-1]["line"] == inner.line("# blocks")
    assert len(event["stack"]) < 100


FUNC = """
import sys
import time

import pytest

DEPTH = {depth}


def depth_here():
    n, f = 0, sys._getframe(1)
    while f is not None:
        n, f = n + 1, f.f_back
    return n


def dig(n):
    if n == 0:
        with open("depth.txt", "w") as out:
            out.write(str(depth_here()))
        time.sleep(0.3)  # blocks at the bottom
        return
    dig(n - 1)  # recurses


@pytest.mark.asyncio
async def test_deep():
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(DEPTH + 1000)
    try:
        dig(DEPTH)  # the test's own line
    finally:
        sys.setrecursionlimit(old)
"""


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_a_stack_deeper_than_the_old_limit_shows_its_true_depth(inner, sampler):
    # 1,500 frames of dig: more than the 1,024 read before, all read now.
    result = inner.run(FUNC.format(depth=1500), f"--loopguard-sampler={sampler}")
    inner.assert_blocked_at(result, "# blocks at the bottom", "dig")
    out = result.stdout.str()
    assert repeated(out) == [1497]
    assert "frames not read" not in out
    result.stdout.fnmatch_lines(
        [f'    File "test_it.py", line {inner.line("# the test")}, in test_deep']
    )


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_a_stack_deeper_than_the_caps_counts_the_frames_not_read(inner, sampler):
    # 12,000 frames of dig: the innermost 10,000 and the outermost 100 frames are read, the
    # frames between counted.
    result = inner.run(FUNC.format(depth=12_000), f"--loopguard-sampler={sampler}")
    inner.assert_blocked_at(result, "# blocks at the bottom", "dig")
    out = result.stdout.str()
    depth = int((inner.pytester.path / "depth.txt").read_text())  # every frame, from dig(0)
    (gap,) = re.findall(r"\.\.\. (\d+) frames not read: loopguard reads the innermost", out)
    assert abs(int(gap) - (depth - 10_100)) <= 2, (gap, depth)
    # The test's frame is among the outermost ones, and still shown.
    result.stdout.fnmatch_lines(
        [
            f'    File "test_it.py", line {inner.line("# the test")}, in test_deep',
            "*[[]Previous line repeated * more times]",
            f"    ... {gap} frames not read: *",
            "*[[]Previous line repeated 9996 more times]",
            f'    File "test_it.py", line {inner.line("# blocks")}, in dig',
        ]
    )


MUTUAL = """
import sys
import time

import pytest


def walk_a(n):
    if n == 0:
        time.sleep(0.3)  # blocks at the bottom
        return
    walk_b(n)  # a calls b


def walk_b(n):
    walk_a(n - 1)  # b calls a


@pytest.mark.asyncio
async def test_mutual():
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(10_000)
    try:
        walk_a(1500)  # the test's own line
    finally:
        sys.setrecursionlimit(old)
"""


def test_mutual_recursion_is_folded_to_its_cycle(inner):
    result = inner.run(MUTUAL)
    inner.assert_blocked_at(result, "# blocks at the bottom", "walk_a")
    result.stdout.fnmatch_lines(
        [
            f'    File "test_it.py", line {inner.line("# the test")}, in test_mutual',
            "      walk_a(1500)  # the test's own line",
            f'    File "test_it.py", line {inner.line("# a calls b")}, in walk_a',
            "      walk_b(n)  # a calls b",
            f'    File "test_it.py", line {inner.line("# b calls a")}, in walk_b',
            "      walk_a(n - 1)  # b calls a",
            "    [[]Previous 2 lines repeated 1499 more times]",
            f'    File "test_it.py", line {inner.line("# blocks")}, in walk_a',
        ],
        consecutive=True,
    )
