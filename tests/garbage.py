"""Garbage whose collection takes a chosen time on this machine, however fast it is.

Tests of how a collection is judged need one that lasts well past the threshold; a fixed number
of objects collected in 0.35 s here took 0.147 s on a quicker machine. Inner sessions get this
module as ``garbage.py`` (``GARBAGE_FILES``); tests in this process import it.
"""

import gc
import pathlib
import time

GARBAGE_FILES = {"garbage": pathlib.Path(__file__).read_text()}


class Node:
    def __init__(self):
        self.me = self  # a reference cycle: only the collector frees it


def _seconds_per_object(probe=200_000):
    """The quickest of three timed collections of ``probe`` objects, per object (a busy
    machine can only make one slower)."""
    best = float("inf")
    for _ in range(3):
        junk = [Node() for _ in range(probe)]
        junk.clear()
        t = time.perf_counter()
        gc.collect()
        best = min(best, time.perf_counter() - t)
    return best / probe


def make_garbage(seconds=0.5, most=15_000_000):
    """Leave unreachable reference cycles that take about ``seconds`` to collect here, with the
    collector disabled (the caller enables it again)."""
    gc.disable()
    count = min(most, int(seconds / max(_seconds_per_object(), 1e-9)))
    junk = [Node() for _ in range(count)]
    junk.clear()
    return count
