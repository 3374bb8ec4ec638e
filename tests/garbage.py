"""Garbage whose collection takes a chosen time on this machine, however fast it is.

Tests of how a collection is judged need one that lasts well past the threshold; a fixed number
of objects collected in 0.35 s here took 0.147 s on a quicker machine. Inner sessions get this
module as ``garbage.py`` (``GARBAGE_FILES``); tests in this process import it.
"""

import gc
import pathlib
import time

import pytest

GARBAGE_FILES = {"garbage": pathlib.Path(__file__).read_text()}


class Node:
    def __init__(self):
        self.me = self  # a reference cycle: only the collector frees it


def _seconds_per_object(probe=300_000):
    """What collecting one more object costs: the quickest of three timed collections of
    ``probe`` objects, less the quickest of three with none (a full collection also walks
    every object the process keeps alive, which a collection of the youngest generation, the
    one an allocation starts, does not). Timed in CPU time: a busy machine makes a collection
    longer on the clock, not on a CPU, so the garbage made lasts at least that long."""

    def quickest(count):
        best = float("inf")
        for _ in range(3):
            junk = [Node() for _ in range(count)]
            junk.clear()
            t = time.thread_time()
            gc.collect()
            best = min(best, time.thread_time() - t)
        return best

    empty = quickest(0)
    return max(quickest(probe) - empty, 0.0) / probe


def make_garbage(seconds=0.5, most=15_000_000):
    """Leave unreachable reference cycles that take about ``seconds`` to collect here, with the
    collector disabled (the caller enables it again)."""
    gc.disable()
    count = min(most, int(seconds / max(_seconds_per_object(), 1e-8)))
    junk = [Node() for _ in range(count)]
    junk.clear()
    return count


@pytest.fixture
def garbage_made():
    """An inner session's fixture: garbage made before the test, outside its loop (so that only
    the collection blocks the loop), the collector enabled again after the test."""
    make_garbage()
    yield
    gc.enable()


def collected_in(result):
    """The seconds an inner test printed as ``COLLECTED IN <seconds>``, or None."""
    text = result.stdout.str()
    return float(text.split("COLLECTED IN ")[1].split()[0]) if "COLLECTED IN" in text else None
