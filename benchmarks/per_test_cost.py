"""What loopguard costs per test: N trivial tests with and without ``-p loopguard``.

Two suites, generated in a temporary directory: N sync tests (``def test_i(): pass``) and N
async tests (``async def test_i(): pass`` under pytest-asyncio, each on a fresh event loop).
Each runs in a fresh ``python -m pytest`` process, with and without the plugin, alternating
which side goes first so that machine noise hits both alike; the figures are medians over the
rounds. Then the same again beside CPU-spinning processes (``--load``, default 3: a loaded
2-core machine, like a suite under ``-n auto`` next to other work).

Two clocks per run:

- *wall*: the whole process, interpreter start-up and imports included (what a user waits);
- *tests*: pytest's run-test loop only (a small timing plugin loaded on both sides), from which
  the cost per test is ``(on - off) / N``; the wall difference minus this is the fixed cost of
  loading the plugin and starting the watchdog.

Other plugins are not loaded (``PYTEST_DISABLE_PLUGIN_AUTOLOAD``) but pytest-asyncio, so both
sides run the same hooks but loopguard's.

    python benchmarks/per_test_cost.py [--tests 2000] [--rounds 5] [--load 3] [--kinds sync,async]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TIMER = '''
import json, os, time
import pytest

@pytest.hookimpl(wrapper=True)
def pytest_runtestloop(session):
    t0 = time.perf_counter()
    try:
        return (yield)
    finally:
        with open(os.environ["PER_TEST_COST_OUT"], "w") as f:
            json.dump({"loop": time.perf_counter() - t0, "n": session.testscollected}, f)
'''

SYNC_TEST = "def test_{i}():\n    pass\n\n"
ASYNC_TEST = "async def test_{i}():\n    pass\n\n"


def _write_suites(root: Path, n: int) -> dict[str, Path]:
    (root / "_per_test_timer.py").write_text(TIMER)
    suites = {}
    for kind, template in (("sync", SYNC_TEST), ("async", ASYNC_TEST)):
        d = root / kind
        d.mkdir()
        (d / "pytest.ini").write_text("[pytest]\nasyncio_mode = auto\n")
        # Files of 100 tests, as a real suite has them.
        for f in range(0, n, 100):
            body = "".join(template.format(i=i) for i in range(f, min(n, f + 100)))
            (d / f"test_{kind}_{f // 100:03d}.py").write_text(body)
        suites[kind] = d
    return suites


def _run(suite: Path, root: Path, plugin: bool) -> tuple[float, float, int]:
    """One pytest process; returns (wall seconds, run-test loop seconds, tests run)."""
    out = root / "timing.json"
    env = dict(
        os.environ,
        PYTEST_DISABLE_PLUGIN_AUTOLOAD="1",
        PER_TEST_COST_OUT=str(out),
        PYTHONPATH=os.pathsep.join(p for p in (str(root), os.environ.get("PYTHONPATH")) if p),
    )
    for name in list(env):
        if name.startswith("LOOPGUARD_"):
            del env[name]
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    cmd += ["-p", "pytest_asyncio.plugin", "-p", "_per_test_timer"]
    if plugin:
        cmd += ["-p", "loopguard"]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=suite, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        sys.exit(f"pytest failed in {suite}:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    data = json.loads(out.read_text())
    return wall, data["loop"], data["n"]


def _measure(suite: Path, root: Path, rounds: int) -> dict[str, list[float]]:
    _run(suite, root, False)  # warm the file system cache and bytecode
    _run(suite, root, True)
    res: dict[str, list[float]] = {"wall_off": [], "wall_on": [], "loop_off": [], "loop_on": []}
    for r in range(rounds):
        order = (False, True) if r % 2 == 0 else (True, False)
        for plugin in order:
            wall, loop, _ = _run(suite, root, plugin)
            side = "on" if plugin else "off"
            res[f"wall_{side}"].append(wall)
            res[f"loop_{side}"].append(loop)
    return res


def _report(label: str, kind: str, n: int, res: dict[str, list[float]]) -> dict[str, float]:
    med = {k: statistics.median(v) for k, v in res.items()}
    per_test_us = (med["loop_on"] - med["loop_off"]) / n * 1e6
    fixed_ms = ((med["wall_on"] - med["wall_off"]) - (med["loop_on"] - med["loop_off"])) * 1e3
    row = {
        "wall_off_s": med["wall_off"],
        "wall_on_s": med["wall_on"],
        "wall_ratio": med["wall_on"] / med["wall_off"],
        "loop_ratio": med["loop_on"] / med["loop_off"],
        "off_us_per_test": med["loop_off"] / n * 1e6,
        "extra_us_per_test": per_test_us,
        "fixed_ms": fixed_ms,
    }
    print(
        f"{label:<8} {kind:<6} wall {row['wall_off_s']:6.3f} -> {row['wall_on_s']:6.3f} s "
        f"({row['wall_ratio']:.3f}x)   tests {med['loop_off']:6.3f} -> {med['loop_on']:6.3f} s "
        f"({row['loop_ratio']:.3f}x)   {row['off_us_per_test']:6.1f} us/test "
        f"{per_test_us:+6.1f} us/test   fixed {fixed_ms:+5.0f} ms",
        flush=True,
    )
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tests", type=int, default=2000, help="tests per suite (default 2000)")
    ap.add_argument("--rounds", type=int, default=5, help="runs per side (default 5)")
    ap.add_argument("--load", type=int, default=3, help="CPU-spinning processes (default 3)")
    ap.add_argument("--kinds", default="sync,async", help="suites to run (default sync,async)")
    ap.add_argument("--quiet-only", action="store_true", help="skip the loaded measurement")
    ap.add_argument("--json", metavar="PATH", help="also write the figures to this file")
    args = ap.parse_args()
    kinds = [k for k in args.kinds.split(",") if k]
    print(
        f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, {args.tests} tests per suite, "
        f"{args.rounds} runs per side, medians",
        flush=True,
    )
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="loopguard-per-test-") as tmp:
        root = Path(tmp)
        suites = _write_suites(root, args.tests)
        loads = [0] if args.quiet_only or args.load == 0 else [0, args.load]
        for load in loads:
            label = "idle" if load == 0 else f"load {load}"
            spinners = [
                subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(load)
            ]
            try:
                for kind in kinds:
                    res = _measure(suites[kind], root, args.rounds)
                    results[f"{label} {kind}"] = _report(label, kind, args.tests, res)
            finally:
                for p in spinners:
                    p.kill()
                    p.wait()
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
