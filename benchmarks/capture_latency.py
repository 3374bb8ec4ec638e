"""How late the blocked loop's stack is captured, per sampler, and what one native sample costs.

For each blocking workload (a GIL-releasing sleep, and C calls that hold the GIL: a
catastrophic regex, ``sorted`` of 3M floats, ``json.dumps`` of a large object) an asyncio loop
blocks once under ``loopguard.guard(threshold=50ms)``. The figure is ``captured_after -
threshold``: how long after the block crossed the threshold its stack was read. The "native"
sampler reads it without the GIL; the "gil" sampler has to wait for the GIL, so it is late by
the whole C call. Each sampler runs in its own process (the watchdog's sampler is fixed per
process).

Then the per-sample cost of the native reader on a thread blocked under a stack of the given
depth.

    python benchmarks/capture_latency.py [--rounds 3] [--depths 10,50,200]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time

WORKLOADS = ["sleep", "regex", "sorted", "json"]


def _workload(kind: str):
    import random
    import re

    if kind == "sleep":
        return lambda: time.sleep(0.4)
    if kind == "regex":
        return lambda: re.match(r"(a+)+$", "a" * 23 + "b")
    if kind == "sorted":
        data = [random.random() for _ in range(3_000_000)]
        return lambda: sorted(data)
    if kind == "json":
        obj = [{"k": i, "v": [str(i)] * 20} for i in range(150_000)]
        return lambda: json.dumps(obj)
    raise ValueError(kind)


def _child(kind: str, rounds: int) -> None:
    """Runs in a subprocess with LOOPGUARD_SAMPLER set; prints one JSON line."""
    import asyncio

    import loopguard

    block = _workload(kind)

    async def main() -> None:
        await asyncio.sleep(0.01)
        t0 = time.perf_counter()
        block()
        out["block_s"].append(time.perf_counter() - t0)
        await asyncio.sleep(0.01)

    out: dict = {"late_s": [], "block_s": [], "frames_ok": 0}
    for _ in range(rounds):
        with loopguard.guard(threshold="50ms", raise_=False) as g:
            asyncio.run(main())
        for ev in g.events:
            if ev.captured_after is not None:
                out["late_s"].append(ev.captured_after - ev.threshold)
            if any(f.function.endswith("main") for f in ev.stack):
                out["frames_ok"] += 1
    from loopguard import _native

    out["sampler"] = _native.sampler_name()
    print(json.dumps(out))


def _run_child(sampler: str, kind: str, rounds: int) -> dict:
    env = dict(os.environ, LOOPGUARD_SAMPLER=sampler)
    proc = subprocess.run(
        [sys.executable, __file__, "--child", kind, "--rounds", str(rounds)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1:] or ["?"]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _sample_cost(depth: int, seconds: float = 1.0) -> dict:
    from loopguard import _native

    stop = threading.Event()
    box: dict = {}

    def rec(n: int) -> None:
        if n <= 0:
            box["tstate"] = _native._reader_current_tstate()
            stop.wait()
        else:
            rec(n - 1)

    t = threading.Thread(target=rec, args=(depth,))
    t.start()
    while "tstate" not in box:
        time.sleep(0.001)
    time.sleep(0.02)
    try:
        return _native._reader_stress(box["tstate"], t.ident, seconds)
    finally:
        stop.set()
        t.join()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--depths", default="10,50,200")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _child(args.child, args.rounds)
        return

    print(f"Python {sys.version.split()[0]}: capture lateness after the 50ms threshold")
    print(f"{'workload':<8} {'sampler':<7} {'block':>8} {'late (median)':>14} {'stack ok':>9}")
    for kind in WORKLOADS:
        for sampler in ("native", "gil"):
            r = _run_child(sampler, kind, args.rounds)
            if "error" in r:
                print(f"{kind:<8} {sampler:<7} error: {r['error']}")
                continue
            late = statistics.median(r["late_s"]) * 1e3 if r["late_s"] else float("nan")
            block = statistics.median(r["block_s"]) * 1e3
            print(
                f"{kind:<8} {r['sampler']:<7} {block:>6.0f}ms {late:>12.1f}ms "
                f"{r['frames_ok']:>5}/{args.rounds}"
            )

    print("\nnative per-sample cost (stack read twice, validated)")
    for depth in (int(d) for d in args.depths.split(",")):
        r = _sample_cost(depth)
        print(
            f"depth {depth:>4}: p50 {r['p50_ns'] / 1e3:7.1f}us  p99 {r['p99_ns'] / 1e3:7.1f}us  "
            f"mean {r['mean_ns'] / 1e3:7.1f}us  ({r['ok']}/{r['samples']} ok)"
        )


if __name__ == "__main__":
    main()
