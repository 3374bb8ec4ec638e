"""The GIL reader: who holds the GIL, read from the runtime without taking it.

The reads happen inside ``_native`` with the GIL released (``py.allow_threads``), so the answers
can be "released", "another thread" or (with ``release=False``) "this thread".
"""

import collections
import ctypes
import random
import re
import sys
import sysconfig
import threading
import time

import pytest
from loopguard import _native

pytestmark = [
    pytest.mark.interpreter,
    pytest.mark.skipif(
        not sys.platform.startswith("linux")
        or hasattr(sys, "gettotalrefcount")
        or bool(sysconfig.get_config_var("Py_GIL_DISABLED")),
        reason="the GIL reader supports release GIL builds on Linux",
    ),
]

_PyThreadState_Get = ctypes.pythonapi.PyThreadState_Get
_PyThreadState_Get.restype = ctypes.c_void_p
_PyThreadState_Get.argtypes = []


def current_tstate():
    """The calling thread's ``PyThreadState*`` (``ctypes.pythonapi`` calls keep the GIL)."""
    return _PyThreadState_Get()


def majority(samples):
    """The most common ``(locked, holder)`` pair and its share of ``samples``."""
    counts = collections.Counter(samples)
    value, n = counts.most_common(1)[0]
    return value, n / len(samples)


def run_worker(target, *args):
    """Runs ``target(ready, stop, out, *args)`` in a thread; returns (thread, ready, stop, out)."""
    ready, stop = threading.Event(), threading.Event()
    out = {}

    def body():
        out["ident"] = threading.get_ident()
        out["tstate"] = current_tstate()
        target(ready, stop, out, *args)

    t = threading.Thread(target=body, daemon=True)
    t.start()
    assert ready.wait(10)
    return t, ready, stop, out


def test_reader_info():
    info = _native._gil_reader_info()
    assert info["version"] == tuple(sys.version_info[:2])
    expected = "_Py_DebugOffsets" if sys.version_info >= (3, 13) else "headers"
    assert info["source"] == expected
    assert info["runtime"] and info["main_interpreter"] and info["gil"]


def test_holder_is_this_thread_when_read_with_the_gil():
    assert _native._gil_state(release=False) == (True, threading.get_ident())
    locked, tstate = _native._gil_state_raw(release=False)
    assert locked and tstate == current_tstate()


def test_holder_is_the_calling_worker_thread():
    got = {}

    def body():
        got["ident"] = threading.get_ident()
        got["state"] = _native._gil_state(release=False)

    t = threading.Thread(target=body)
    t.start()
    t.join(10)
    assert got["state"] == (True, got["ident"])


def test_released_when_every_other_thread_sleeps():
    def sleeper(ready, stop, out):
        ready.set()
        stop.wait(30)

    workers = [run_worker(sleeper) for _ in range(2)]
    try:
        # Several rounds: a stray wake-up (gc, a signal handler) must not decide the result.
        for _ in range(3):
            samples = [(lk, h) for _, lk, h in _native._gil_sample(0.2)]
            (locked, _), share = majority(samples)
            if not locked and share >= 0.8:
                break
        assert not locked, collections.Counter(samples)
        assert share >= 0.8, collections.Counter(samples)
        sleepers = {w[3]["ident"] for w in workers}
        assert not any(locked and holder in sleepers for locked, holder in samples)
    finally:
        for t, _, stop, _ in workers:
            stop.set()
            t.join(10)


def test_holder_is_a_thread_spinning_in_python():
    def spinner(ready, stop, out):
        ready.set()
        n = 0
        while not stop.is_set():
            n += 1
        out["n"] = n

    t, _, stop, out = run_worker(spinner)
    try:
        samples = [(lk, h) for _, lk, h in _native._gil_sample(0.5)]
    finally:
        stop.set()
        t.join(10)
    counts = collections.Counter(samples)
    held_by_spinner = counts[(True, out["ident"])]
    # We never hold the GIL while sampling, so the spinner has it nearly all the time; leave room
    # for a loaded machine where it waits for a CPU.
    assert held_by_spinner / len(samples) >= 0.6, counts
    me = threading.get_ident()
    assert counts[(True, me)] == 0, counts


def _c_call_worker(ready, stop, out, prepare):
    call = prepare()
    ready.set()
    # Give the main thread time to enter the sampler (with the GIL released) first.
    time.sleep(0.1)
    out["start"] = _native.now_ns()
    call()
    out["end"] = _native.now_ns()


def _sort_floats():
    rnd = random.Random(1)
    data = [rnd.random() for _ in range(3_000_000)]
    return lambda: sorted(data)


def _catastrophic_regex():
    pattern = re.compile(r"(a+)+$")
    text = "a" * 24 + "b"
    return lambda: pattern.match(text)


@pytest.mark.parametrize("prepare", [_sort_floats, _catastrophic_regex], ids=["sorted", "regex"])
def test_holder_is_a_thread_in_a_long_c_call(prepare):
    # The sampler runs (with the GIL released) from before the worker enters its C call; only
    # the samples taken while the call ran are judged: the worker holds the GIL throughout.
    # Our own return from the sampler waits for the call to end (it needs the GIL).
    margin = 2_000_000  # 2 ms: the call begins and ends in Python code around it
    for _ in range(3):  # a loaded machine may start the call before we sample: try again
        t, _, _, out = run_worker(_c_call_worker, prepare)
        samples = _native._gil_sample(0.6, 0.0005)
        t.join(60)
        assert "end" in out, "the worker did not finish"
        start, end = out["start"], out["end"]
        inside = [(lk, h) for at, lk, h in samples if start + margin <= at <= end - margin]
        if len(inside) >= 20:
            break
    assert len(inside) >= 20, f"too few samples during the C call ({(end - start) / 1e6} ms)"
    counts = collections.Counter(inside)
    assert counts[(True, out["ident"])] / len(inside) >= 0.9, counts


def test_thread_ids_of_a_thread_state():
    def parked(ready, stop, out):
        out["native"] = threading.get_native_id()
        ready.set()
        stop.wait(30)

    t, _, stop, out = run_worker(parked)
    try:
        ident, native = _native._gil_thread_ids(out["tstate"])
        assert ident == out["ident"]
        if sys.version_info >= (3, 11):
            assert native == out["native"]
        else:
            assert native is None
        me = _native._gil_thread_ids(current_tstate())
        assert me[0] == threading.get_ident()

        threads = _native._gil_threads()
        by_tstate = {ts: (i, n) for ts, i, n in threads}
        assert by_tstate[out["tstate"]][0] == out["ident"]
        assert by_tstate[current_tstate()][0] == threading.get_ident()
        idents = {i for _, i, _ in threads}
        assert {th.ident for th in threading.enumerate()} <= idents
    finally:
        stop.set()
        t.join(10)


def test_bad_thread_state_is_an_error_not_a_crash():
    with pytest.raises(RuntimeError):
        _native._gil_thread_ids(8)
    with pytest.raises(RuntimeError):
        # Readable memory that is not a thread state of the main interpreter.
        _native._gil_thread_ids(id(object()))
