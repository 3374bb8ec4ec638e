"""Detection slack and per-iteration cost on uvloop (periodic beat) and trio (instrument hooks).

    python benchmarks/loop_kinds.py [--blocks 10] [--iterations 200000]
    python benchmarks/loop_kinds.py --only uvloop:on --iterations 20000   # for callgrind

``--callgrind`` counts instructions instead (valgrind --tool=callgrind on ``--only`` runs of
22 000 and 2 000 iterations, difference / 20 000), which machine noise cannot move.

Slack: blocks of 300 ms at a random phase against a 100 ms threshold; prints how much shorter
than the true block each reported duration is, and when the stack was captured.
Cost: the cheapest possible iteration (``await asyncio.sleep(0)`` / ``await trio.sleep(0)``),
loopguard on vs off, alternated in one process; medians of 5.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import time

import loopguard
from _callgrind import instructions


def block_once(kind: str, seconds: float) -> tuple[float, float]:
    async def a_main():
        await asyncio.sleep(random.uniform(0.0, 0.05))
        t0 = time.perf_counter()
        time.sleep(seconds)
        return time.perf_counter() - t0

    async def t_main():
        import trio

        await trio.sleep(random.uniform(0.0, 0.05))
        t0 = time.perf_counter()
        time.sleep(seconds)
        return time.perf_counter() - t0

    try:
        with loopguard.guard(threshold="100ms"):
            if kind == "uvloop":
                import uvloop

                true = uvloop.run(a_main())
            elif kind == "trio":
                import trio

                true = trio.run(t_main)
            else:
                true = asyncio.run(a_main())
    except loopguard.LoopBlockedError as e:
        ev = e.events[0]
        return true - ev.duration, ev.captured_after or float("nan")
    return float("nan"), float("nan")


def per_iteration(kind: str, n: int, guarded: bool, threshold: str = "100ms") -> float:
    async def a_loop():
        for _ in range(n):
            await asyncio.sleep(0)

    async def t_loop():
        import trio

        for _ in range(n):
            await trio.sleep(0)

    def go():
        t0 = time.perf_counter()
        if kind == "uvloop":
            import uvloop

            uvloop.run(a_loop())
        elif kind == "trio":
            import trio

            trio.run(t_loop)
        else:
            asyncio.run(a_loop())
        return (time.perf_counter() - t0) / n

    if guarded:
        with loopguard.guard(threshold=threshold):
            return go()
    return go()


def callgrind_instructions(kind: str, mode: str, n: int) -> int:
    return instructions(
        [sys.executable, __file__, "--only", f"{kind}:{mode}", "--iterations", str(n)]
    )


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--blocks", type=int, default=10)
    p.add_argument("--iterations", type=int, default=200_000)
    p.add_argument("--only", help="KIND:on|off: run the iteration workload once, print nothing")
    p.add_argument("--callgrind", action="store_true")
    args = p.parse_args()
    if args.only:
        kind, mode = args.only.split(":")
        # A generous threshold: valgrind slows everything ~50x; this measures cost only.
        per_iteration(kind, args.iterations, mode == "on", threshold="10s")
        return
    if args.callgrind:
        for kind in ("asyncio", "uvloop", "trio"):
            cost = {}
            for mode in ("off", "on"):
                hi = callgrind_instructions(kind, mode, 22_000)
                lo = callgrind_instructions(kind, mode, 2_000)
                cost[mode] = (hi - lo) / 20_000
            print(
                f"{kind:8} instructions per iteration: off {cost['off']:.0f}, on {cost['on']:.0f}, "
                f"+{cost['on'] - cost['off']:.0f}, ratio {cost['on'] / cost['off']:.3f}"
            )
        return
    for kind in ("asyncio", "uvloop", "trio"):
        short, captured = zip(*(block_once(kind, 0.3) for _ in range(args.blocks)), strict=True)
        print(
            f"{kind:8} reported duration short by {min(short) * 1e3:+.1f} .. "
            f"{max(short) * 1e3:+.1f} ms (median {statistics.median(short) * 1e3:+.1f}); "
            f"stack captured {min(captured) * 1e3:.1f} .. {max(captured) * 1e3:.1f} ms after "
            "the block began"
        )
    for kind in ("asyncio", "uvloop", "trio"):
        on, off = [], []
        for _ in range(5):
            off.append(per_iteration(kind, args.iterations, False))
            on.append(per_iteration(kind, args.iterations, True))
        m_on, m_off = statistics.median(on), statistics.median(off)
        print(
            f"{kind:8} per iteration: off {m_off * 1e6:.2f} us, on {m_on * 1e6:.2f} us, "
            f"+{(m_on - m_off) * 1e9:.0f} ns, ratio {m_on / m_off:.3f}"
        )


if __name__ == "__main__":
    main()
