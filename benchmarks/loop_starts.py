"""What a new event loop's run costs: a loop made, run once and closed, without and with loopguard.

A test's own loop (pytest-asyncio's function-scoped loop), ``asyncio.run`` in a test, a test
client that starts a portal thread and a loop for each request (Starlette's ``TestClient``,
anyio's ``start_blocking_portal``): each registers a new loop with the watchdog, runs it and
lets it go. The workload is ``asyncio.run`` of a coroutine that returns at once, ``--runs``
times in a row, either on the calling thread (``--mode same``) or each on a new thread
(``--mode thread``).

Each side runs in its own process, ``--rounds`` times, alternating which goes first; the
figures are medians per run: wall time, CPU time of the whole process (user + system, every
thread: the watchdog's included) and context switches (voluntary + involuntary, every thread),
all measured around the runs alone.

    python benchmarks/loop_starts.py [--mode same|thread] [--runs 2000] [--rounds 9]
    python benchmarks/loop_starts.py --callgrind [--mode same|thread] [--runs 500]

``--callgrind`` counts instructions instead (valgrind's callgrind, all threads): each side with
``--runs`` runs and with none, the difference divided by the runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import statistics
import subprocess
import sys
import threading
import time

from _callgrind import per_unit


async def _nothing() -> None:
    return None


def _runs(n: int, mode: str) -> None:
    if mode == "same":
        for _ in range(n):
            asyncio.run(_nothing())
        return
    for _ in range(n):
        t = threading.Thread(target=asyncio.run, args=(_nothing(),))
        t.start()
        t.join()


def _measured(n: int, mode: str) -> dict[str, float]:
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    _runs(n, mode)
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)
    switches = (r1.ru_nvcsw + r1.ru_nivcsw) - (r0.ru_nvcsw + r0.ru_nivcsw)
    return {"wall": wall, "cpu": cpu, "switches": switches}


def _only(side: str, n: int, mode: str) -> dict[str, float]:
    if side == "off":
        _runs(50, mode)  # warm: the first runs import and allocate what later ones reuse
        return _measured(n, mode)
    import loopguard

    # A generous threshold: this measures what a loop's start and end cost, not detection.
    with loopguard.guard(threshold="10s"):
        _runs(50, mode)
        return _measured(n, mode)


def _side(side: str, n: int, mode: str) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--only", side, "--runs", str(n), "--mode", mode],
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        sys.exit(f"the {side} side failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.splitlines()[-1])


def _callgrind(n: int, mode: str) -> None:
    def command(side: str, runs: int) -> list[str]:
        return [sys.executable, __file__, "--only", side, "--mode", mode, "--runs", str(runs)]

    version = sys.version.split()[0]
    per_unit(command, n, f"python {version}, mode {mode}, {n} runs, instructions per run")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mode", choices=["same", "thread"], default="same")
    ap.add_argument("--runs", type=int)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--only", choices=["off", "on"], help="run one side once, print its figures")
    ap.add_argument("--callgrind", action="store_true", help="count instructions (valgrind)")
    args = ap.parse_args()
    if args.only:
        print(json.dumps(_only(args.only, args.runs if args.runs is not None else 2000, args.mode)))
        return
    if args.callgrind:
        _callgrind(args.runs or 500, args.mode)
        return
    n = args.runs or 2000
    got: dict[str, list[dict[str, float]]] = {"off": [], "on": []}
    for r in range(args.rounds):
        for side in ("off", "on") if r % 2 == 0 else ("on", "off"):
            got[side].append(_side(side, n, args.mode))
    print(f"python {sys.version.split()[0]}, mode {args.mode}, {n} runs x {args.rounds} rounds")
    med = {
        side: {k: statistics.median(x[k] for x in runs) / n for k in ("wall", "cpu", "switches")}
        for side, runs in got.items()
    }
    for side in ("off", "on"):
        m = med[side]
        print(
            f"loopguard {side:3}: wall {m['wall'] * 1e6:7.1f} us  cpu {m['cpu'] * 1e6:7.1f} us  "
            f"context switches {m['switches']:.2f}  (per run)"
        )
    off, on = med["off"], med["on"]
    wall, cpu = on["wall"] - off["wall"], on["cpu"] - off["cpu"]
    print(
        f"on/off: wall {on['wall'] / off['wall']:.3f} ({wall * 1e6:+.1f} us), "
        f"cpu {on['cpu'] / off['cpu']:.3f} ({cpu * 1e6:+.1f} us), "
        f"context switches {on['switches'] - off['switches']:+.2f} per run"
    )


if __name__ == "__main__":
    main()
