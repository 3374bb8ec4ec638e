"""Cost of loopguard per event-loop iteration: the same workload with loopguard off and on.

The workload is N x ``await asyncio.sleep(0)`` (each one a full loop iteration: a selector
call with timeout 0, one callback). Runs alternate off/on so that machine noise hits both
sides alike; the figure is the ratio of the medians.

    python benchmarks/loop_overhead.py [--iterations 1000000] [--rounds 7]
    python benchmarks/loop_overhead.py --callgrind [--iterations 20000]

``--callgrind`` counts instructions instead of seconds (valgrind's callgrind, which the noise of a
shared machine cannot move): each side runs with N iterations and with none, and the difference
divided by N is the cost per iteration, start-up excluded.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time

import loopguard
from _callgrind import per_unit


async def _spin(n: int) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


def _run(n: int) -> float:
    loop = asyncio.new_event_loop()
    try:
        t0 = time.perf_counter()
        loop.run_until_complete(_spin(n))
        return time.perf_counter() - t0
    finally:
        loop.close()


def _run_guarded(n: int) -> float:
    # A generous threshold: this measures the heartbeat cost, not detection.
    with loopguard.guard(threshold="10s"):
        return _run(n)


def _callgrind(n: int) -> None:
    def command(side: str, iterations: int) -> list[str]:
        return [sys.executable, __file__, "--only", side, "--iterations", str(iterations)]

    version = sys.version.split()[0]
    per_unit(command, n, f"python {version}, {n} iterations, instructions per iteration")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument(
        "--only",
        choices=["off", "on"],
        help="run one side once (for instruction counting under valgrind --tool=callgrind)",
    )
    ap.add_argument("--callgrind", action="store_true", help="count instructions (valgrind)")
    args = ap.parse_args()
    if args.callgrind:
        _callgrind(args.iterations if args.iterations != 1_000_000 else 20_000)
        return
    if args.only:
        (_run if args.only == "off" else _run_guarded)(args.iterations)
        return
    _run(10_000)
    _run_guarded(10_000)
    off, on = [], []
    for r in range(args.rounds):
        # Alternate which side goes first, to cancel drift.
        if r % 2 == 0:
            off.append(_run(args.iterations))
            on.append(_run_guarded(args.iterations))
        else:
            on.append(_run_guarded(args.iterations))
            off.append(_run(args.iterations))
    m_off, m_on = statistics.median(off), statistics.median(on)
    per_off = m_off / args.iterations * 1e9
    per_on = m_on / args.iterations * 1e9
    print(f"python {sys.version.split()[0]}, {args.iterations} iterations x {args.rounds} rounds")
    print(f"loopguard off: {m_off:.3f} s  ({per_off:.0f} ns per iteration)")
    print(f"loopguard on:  {m_on:.3f} s  ({per_on:.0f} ns per iteration)")
    print(f"ratio on/off:  {m_on / m_off:.3f}  (+{per_on - per_off:.0f} ns per iteration)")


if __name__ == "__main__":
    main()
