"""What ``--loopguard-native=on`` costs: per capture, and for a loop that never blocks.

1. Per capture, on a worker thread compressing with zlib (C code, running, GIL released so
   that the measuring thread can run):

   * "python only": the watchdog's Python stack sample (``_native._reader_sample``);
   * "native, taken": the native stack taken (a 1 ms look at whether the thread keeps running,
     then a signal; the handler walks the stack into preallocated storage);
   * "native, named": the same, then named and folded (done once per block, when it ends; the
     first one loads the libraries' symbol tables);

   and the time the worker itself loses to the handler: a fixed compression, with a capture
   every 20 ms vs none (thread CPU time).

2. A loop that never blocks, under ``loopguard.guard()``, with native frames on vs off:
   thread CPU time per iteration, and whether a signal handler was installed (``SigCgt`` of
   ``/proc/self/status``). Nothing is done for native frames until a block is confirmed, so
   the ratio is 1 within noise and no handler is installed.

    python benchmarks/native_cost.py [--captures 200] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import threading
import time
import zlib

import loopguard
from loopguard import _native

DATA = bytes(range(256)) * (1 << 16)  # 16 MiB: about a second at level 9


def _realtime_handlers() -> int:
    """How many real-time signals have a handler (``SigCgt`` of ``/proc/self/status``): the
    native-frame capture installs one on its first capture, nothing else here does."""
    import signal

    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("SigCgt:"):
                mask = int(line.split()[1], 16)
                return sum(
                    1
                    for sig in range(signal.SIGRTMIN, signal.SIGRTMAX + 1)
                    if mask >> (sig - 1) & 1
                )
    return -1


def _zlib_worker(stop: threading.Event, box: dict) -> None:
    box["tid"] = threading.get_native_id()
    box["tstate"] = _native._reader_current_tstate()
    while not stop.is_set():
        zlib.compress(DATA, 9)


def _per_capture(n: int) -> dict[str, list[float]]:
    stop, box = threading.Event(), {}
    t = threading.Thread(target=_zlib_worker, args=(stop, box), daemon=True)
    t.start()
    while "tid" not in box:
        time.sleep(0.001)
    time.sleep(0.05)
    out: dict[str, list[float]] = {"python only": [], "native, taken": [], "native, named": []}
    notes: dict[str, int] = {}
    try:
        for i in range(n):
            t0 = time.perf_counter()
            json.loads(_native._reader_sample(box["tstate"], t.ident or 0, 0.0))
            t1 = time.perf_counter()
            _, note, taken = _native._native_stack_of(box["tid"], resolve=False)
            t2 = time.perf_counter()
            _native._native_stack_of(box["tid"], resolve=True)
            t3 = time.perf_counter()
            if i == 0:
                out["first named"] = [t3 - t2]
            out["python only"].append(t1 - t0)
            out["native, taken"].append(t2 - t1)
            out["native, named"].append(t3 - t2)
            key = note or f"{taken} addresses"
            notes[key] = notes.get(key, 0) + 1
            time.sleep(0.005)
    finally:
        stop.set()
    print("  outcomes:", ", ".join(f"{k}: {v}" for k, v in sorted(notes.items())))
    return out


def _work_with_captures(capture_every: float | None) -> float:
    """Thread CPU seconds of a fixed compression on a worker, captured every ``capture_every``."""
    box: dict = {}
    done = threading.Event()

    def worker() -> None:
        box["tid"] = threading.get_native_id()
        t0 = time.thread_time()
        zlib.compress(DATA, 9)
        box["cpu"] = time.thread_time() - t0
        done.set()

    t = threading.Thread(target=worker)
    t.start()
    while "tid" not in box:
        time.sleep(0.001)
    while capture_every is not None and not done.wait(capture_every):
        _native._native_stack_of(box["tid"], resolve=False)
    t.join()
    return box["cpu"]


def _loop_cost(native: bool, iterations: int = 50_000) -> float:
    """Thread CPU seconds per loop iteration of a loop that never blocks (CPU time: the same
    on a busy machine)."""
    _native.set_native_stacks(native)

    async def spin() -> float:
        t0 = time.thread_time()
        for _ in range(iterations):
            await asyncio.sleep(0)
        return (time.thread_time() - t0) / iterations

    try:
        with loopguard.guard(threshold="100ms"):
            return asyncio.run(spin())
    finally:
        _native.set_native_stacks(False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--captures", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    print(f"Python {sys.version.split()[0]}")

    handlers_before = _realtime_handlers()
    print("\n2. a loop that never blocks (thread CPU per iteration, median of rounds)")
    _loop_cost(False)  # warm-up
    off, on = [], []
    for i in range(args.rounds):
        for native in (False, True) if i % 2 else (True, False):
            (on if native else off).append(_loop_cost(native))
    m_off, m_on = statistics.median(off), statistics.median(on)
    print(
        f"  native off: {m_off * 1e6:.2f} us   native on: {m_on * 1e6:.2f} us   "
        f"on/off {m_on / m_off:.3f}"
    )
    print(f"  real-time signal handlers installed: {_realtime_handlers() - handlers_before}")

    print(f"\n1. per capture, worker in zlib.compress ({args.captures} captures)")
    costs = _per_capture(args.captures)
    for name, xs in costs.items():
        xs = sorted(xs)
        p99 = xs[min(len(xs) - 1, int(len(xs) * 0.99))]
        print(
            f"  {name:<14} median {statistics.median(xs) * 1e3:8.3f} ms   p99 {p99 * 1e3:8.3f} ms"
        )
    base_runs, taxed_runs = [], []
    for _ in range(args.rounds * 2):
        base_runs.append(_work_with_captures(None))
        taxed_runs.append(_work_with_captures(0.02))
    base, taxed = statistics.median(base_runs), statistics.median(taxed_runs)
    print(
        f"  worker CPU for a fixed compression: {base * 1e3:.0f} ms alone, "
        f"{taxed * 1e3:.0f} ms with a capture every 20 ms (ratio {taxed / base:.3f})"
    )
    print(f"  real-time signal handlers installed now: {_realtime_handlers() - handlers_before}")


if __name__ == "__main__":
    main()
