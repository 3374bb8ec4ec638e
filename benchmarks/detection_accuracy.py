"""How exact loopguard's reports are: reported duration vs the real block, and how soon after
the threshold crossing the stack was captured (p50 and p99), for several kinds of block.

    python benchmarks/detection_accuracy.py [--repeat 20] [--threshold 0.1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import sys
import time

import loopguard


def _sleep(seconds: float) -> None:
    time.sleep(seconds)


def _cpu(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def _regex(_seconds: float) -> None:
    re.match(r"(a+)+$", "a" * 23 + "b")


def _json(_seconds: float) -> None:
    json.dumps([{"id": i, "name": "x" * 20, "tags": [1, 2, 3]} for i in range(300_000)])


_FLOATS = [float((i * 7919) % 1_000_003) for i in range(3_000_000)]


def _sorted(_seconds: float) -> None:
    sorted(_FLOATS)


def _sum(_seconds: float) -> None:
    sum(range(30_000_000))


WORKLOADS = {
    "time.sleep": _sleep,
    "python loop": _cpu,
    "regex": _regex,
    "json.dumps": _json,
    "sorted": _sorted,
    "sum(range)": _sum,
}


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def measure(work, seconds: float, threshold: float):
    real = []

    async def main():
        await asyncio.sleep(0)
        t0 = time.perf_counter()
        work(seconds)
        real.append(time.perf_counter() - t0)

    try:
        with loopguard.guard(threshold=threshold):
            asyncio.run(main())
    except loopguard.LoopBlockedError as e:
        ev = max(e.events, key=lambda ev: ev.duration)
        return real[0], ev.duration, ev.captured_after
    return real[0], None, None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--threshold", type=float, default=0.1)
    args = ap.parse_args()
    print(f"python {sys.version.split()[0]}, threshold {args.threshold * 1000:.0f} ms")
    print(
        f"{'workload':<12} {'real':>7} {'duration error':>15} "
        f"{'capture latency after threshold':>34}"
    )
    print(f"{'':<12} {'':>7} {'median':>15} {'p50':>12} {'p99':>10} {'max':>10}")
    for name, work in WORKLOADS.items():
        errors, latency, reals = [], [], []
        for _ in range(args.repeat):
            real, reported, cap = measure(work, 0.3, args.threshold)
            reals.append(real)
            if reported is not None:
                errors.append(reported - real)
                latency.append(cap - args.threshold)
        if not errors:
            print(f"{name:<12} {statistics.median(reals) * 1e3:>5.0f}ms  not detected")
            continue
        print(
            f"{name:<12} {statistics.median(reals) * 1e3:>5.0f}ms "
            f"{statistics.median(errors) * 1e3:>+13.2f}ms "
            f"{_pct(latency, 0.5) * 1e3:>10.2f}ms {_pct(latency, 0.99) * 1e3:>8.2f}ms "
            f"{max(latency) * 1e3:>8.2f}ms   ({len(errors)}/{args.repeat} detected)"
        )


if __name__ == "__main__":
    main()
