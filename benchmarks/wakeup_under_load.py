"""How late the watchdog captures a blocked loop's stack on a busy machine, with and without its
request for a short scheduler slice (see src/sched.rs).

N processes spin on the CPU (N > cores makes a loaded machine, like a suite under ``-n auto``)
while a loop blocks for 250 ms at a 100 ms threshold; the figure is ``captured_after`` minus the
threshold: the watchdog's wake-up latency plus the time to read the stack. Runs alternate
between the two settings (``LOOPGUARD_WATCHDOG_SLICE_US`` = 100 and 0), each in a fresh
process, so both see the same load.

    python benchmarks/wakeup_under_load.py [--load 5] [--rounds 8] [--repeat 10]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

CHILD = r"""
import asyncio, json, re, sys, time
import loopguard

def sleep():
    time.sleep(0.25)

def python_loop():
    end = time.perf_counter() + 0.25
    while time.perf_counter() < end:
        pass

def regex():
    re.match(r"(a+)+$", "a" * 23 + "b")

work = {"time.sleep": sleep, "python loop": python_loop, "regex": regex}[sys.argv[1]]
out = []
for _ in range(int(sys.argv[2])):
    async def main():
        await asyncio.sleep(0)
        work()
    try:
        with loopguard.guard(threshold=0.1):
            asyncio.run(main())
    except loopguard.LoopBlockedError as e:
        ev = max(e.events, key=lambda ev: ev.duration)
        if ev.captured_after is not None:
            out.append(ev.captured_after - 0.1)
print(json.dumps(out))
"""

WORKLOADS = ("time.sleep", "python loop", "regex")
SETTINGS = {"short slice": "100", "no request": "0"}


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--load", type=int, default=5, help="CPU-spinning processes (default 5)")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=10, help="blocks per process")
    args = ap.parse_args()
    spinners = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.load)
    ]
    results: dict[tuple[str, str], list[float]] = {}
    try:
        for work in WORKLOADS:
            for _ in range(args.rounds):
                for name, slice_us in SETTINGS.items():
                    env = dict(os.environ, LOOPGUARD_WATCHDOG_SLICE_US=slice_us)
                    out = subprocess.run(
                        [sys.executable, "-c", CHILD, work, str(args.repeat)],
                        env=env,
                        capture_output=True,
                        text=True,
                        check=True,
                    ).stdout
                    results.setdefault((work, name), []).extend(json.loads(out))
    finally:
        for p in spinners:
            p.kill()
            p.wait()
    print(
        f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, {args.load} spinning "
        f"processes; capture latency after the 100 ms threshold (ms)"
    )
    print(f"{'workload':<12} {'setting':<12} {'n':>4} {'p50':>7} {'p90':>7} {'p99':>7} {'max':>7}")
    for work in WORKLOADS:
        for name in SETTINGS:
            v = results.get((work, name), [])
            if not v:
                print(f"{work:<12} {name:<12} {0:>4}   (not detected)")
                continue
            print(
                f"{work:<12} {name:<12} {len(v):>4} {_pct(v, 0.5) * 1e3:>7.2f} "
                f"{_pct(v, 0.9) * 1e3:>7.2f} {_pct(v, 0.99) * 1e3:>7.2f} {max(v) * 1e3:>7.2f}"
            )
        on, off = results.get((work, "short slice")), results.get((work, "no request"))
        if on and off:
            print(
                f"{'':<12} p99 ratio no request / short slice: "
                f"{_pct(off, 0.99) / max(_pct(on, 0.99), 1e-6):.1f}x"
            )


if __name__ == "__main__":
    main()
