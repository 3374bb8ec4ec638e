"""What loopguard costs per test: N trivial tests with and without ``-p loopguard``.

Two suites, generated in a temporary directory: N sync tests (``def test_i(): pass``) and N
async tests (``async def test_i(): pass`` under pytest-asyncio, each on a fresh event loop).
Each runs in a fresh ``python -m pytest`` process, with and without the plugin, alternating
which side goes first so that machine noise hits both alike; the figures are medians over the
rounds. Then the same again beside CPU-spinning processes (``--load``, default 3: a loaded
2-core machine, like a suite under ``-n auto`` next to other work).

Three clocks per run:

- *wall*: the whole process, interpreter start-up and imports included (what a user waits);
- *tests*: pytest's run-test loop only (a small timing plugin loaded on both sides), from which
  the cost per test is ``(on - off) / N``; the wall difference minus this is the fixed cost of
  loading the plugin and starting the watchdog;
- *cpu*: user + system time of the process, all its threads (the watchdog's included).

It also counts the process's *waits*: voluntary context switches (a thread that sleeps on a
futex, a pipe, a timer), whatever the machine's load; ``(on - off) / N`` is how often a test
waits for loopguard's thread.

A shared machine's noise can swamp a 1 % difference in time. ``--callgrind`` counts
instructions instead (valgrind; smaller suites, since it runs ~50x slower): the instructions
per test with and without the plugin, fixed costs removed by subtracting a one-test run. The
threshold is raised to 60 s there: under valgrind every loop iteration is slow enough to look
like a block, and capturing stacks would be counted as bookkeeping.

Other plugins are not loaded (``PYTEST_DISABLE_PLUGIN_AUTOLOAD``) but pytest-asyncio, so both
sides run the same hooks but loopguard's. Bytecode caching is on (``PYTHONDONTWRITEBYTECODE``
is removed from the children's environment), as on a developer's machine: without it, pytest
compiles every plugin module it rewrites for assertions, loopguard's included, at every run.

``--callgrind`` takes several sizes (``--tests 500,2000``): the instructions per test between
one size and the next then show whether the cost per test grows with the suite. What a test
costs moves between sizes with when the garbage collector's full collections fall (each walks
the whole heap, both sides' alike, once the young generations have been collected often
enough): ``--gc-off`` also counts both sides with the collector disabled from the start, which
leaves the cost of the calls alone (the headline figures are those with the collector on).

Counted instructions are not the same from one run to the next: string hashes are salted per
process (``PYTHONHASHSEED``), which moves every dict's and set's collisions, and with them the
count of a 2-million-instruction test by 10-15 thousand, as much as loopguard's whole cost.
Each count is therefore made under ``--seeds`` fixed salts (the same on both sides), and the
cost per test is given as the median over them, with the lowest and highest.

``--startup`` measures what loading the plugin costs a one-test run: instructions (callgrind)
with and without ``-p loopguard``, with bytecode caching on and off (``PYTHONDONTWRITEBYTECODE``,
common in CI images: pytest's own cache of rewritten modules is not written then), and the
``-X importtime`` entries of the modules only the plugin's side imports, largest first (median
self time over the runs; a loaded machine moves these, not the instructions).

    python benchmarks/per_test_cost.py [--tests 2000] [--rounds 5] [--load 3] [--kinds sync,async]
    python benchmarks/per_test_cost.py --callgrind [--tests 200,2000] [--gc-off] [--seeds 3]
    python benchmarks/per_test_cost.py --startup [--rounds 5]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _callgrind import instructions

TIMER = """
import gc, json, os, time
import pytest

if os.environ.get("PER_TEST_COST_GC") == "off":
    gc.disable()  # before any other plugin is imported (this one is loaded first)

@pytest.hookimpl(wrapper=True)
def pytest_runtestloop(session):
    t0 = time.perf_counter()
    try:
        return (yield)
    finally:
        with open(os.environ["PER_TEST_COST_OUT"], "w") as f:
            json.dump({"loop": time.perf_counter() - t0, "n": session.testscollected}, f)
"""

SYNC_TEST = "def test_{i}():\n    pass\n\n"
ASYNC_TEST = "async def test_{i}():\n    pass\n\n"


def _write_suites(root: Path, n: int) -> dict[str, Path]:
    root.mkdir(exist_ok=True)
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


def _children() -> tuple[float, int]:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime, r.ru_nvcsw


def _env(root: Path) -> dict[str, str]:
    env = dict(
        os.environ,
        PYTEST_DISABLE_PLUGIN_AUTOLOAD="1",
        PER_TEST_COST_OUT=str(root / "timing.json"),
        PYTHONPATH=os.pathsep.join(p for p in (str(root), os.environ.get("PYTHONPATH")) if p),
    )
    for name in list(env):
        if name.startswith("LOOPGUARD_") or name == "PYTHONDONTWRITEBYTECODE":
            del env[name]
    return env


def _pytest(plugin: bool) -> list[str]:
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    cmd += ["-p", "pytest_asyncio.plugin", "-p", "_per_test_timer"]
    if plugin:
        cmd += ["-p", "loopguard"]
    return cmd


def _run(suite: Path, root: Path, plugin: bool) -> tuple[float, float, float, int]:
    """One pytest process; returns (wall, run-test loop, cpu) in seconds and its waits."""
    cpu0, waits0 = _children()
    t0 = time.perf_counter()
    r = subprocess.run(_pytest(plugin), cwd=suite, env=_env(root), capture_output=True, text=True)
    wall = time.perf_counter() - t0
    cpu1, waits1 = _children()
    if r.returncode != 0:
        sys.exit(f"pytest failed in {suite}:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    data = json.loads((root / "timing.json").read_text())
    return wall, data["loop"], cpu1 - cpu0, waits1 - waits0


def _measure(suite: Path, root: Path, rounds: int) -> dict[str, list[float]]:
    _run(suite, root, False)  # warm the file system cache and bytecode
    _run(suite, root, True)
    res: dict[str, list[float]] = {
        f"{clock}_{side}": []
        for clock in ("wall", "loop", "cpu", "waits")
        for side in ("off", "on")
    }
    for r in range(rounds):
        order = (False, True) if r % 2 == 0 else (True, False)
        for plugin in order:
            side = "on" if plugin else "off"
            values = _run(suite, root, plugin)
            for clock, value in zip(("wall", "loop", "cpu", "waits"), values, strict=True):
                res[f"{clock}_{side}"].append(value)
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
        "cpu_ratio": med["cpu_on"] / med["cpu_off"],
        "off_us_per_test": med["loop_off"] / n * 1e6,
        "extra_us_per_test": per_test_us,
        "fixed_ms": fixed_ms,
        "extra_waits_per_test": (med["waits_on"] - med["waits_off"]) / n,
    }
    print(
        f"{label:<8} {kind:<6} wall {row['wall_off_s']:6.3f} -> {row['wall_on_s']:6.3f} s "
        f"({row['wall_ratio']:.3f}x)   tests {med['loop_off']:6.3f} -> {med['loop_on']:6.3f} s "
        f"({row['loop_ratio']:.3f}x)   {row['off_us_per_test']:6.1f} us/test "
        f"{per_test_us:+6.1f} us/test   fixed {fixed_ms:+5.0f} ms   cpu {row['cpu_ratio']:.3f}x   "
        f"waits {row['extra_waits_per_test']:+.2f}/test",
        flush=True,
    )
    return row


def _instructions(suite: Path, root: Path, plugin: bool, gc_on: bool, seed: int) -> int:
    """Instructions executed by one pytest process under callgrind, all threads, with string
    hashes salted by ``seed``."""
    env = dict(_env(root), LOOPGUARD_THRESHOLD="60s", PYTHONHASHSEED=str(seed))
    if not gc_on:
        env["PER_TEST_COST_GC"] = "off"
    return instructions(_pytest(plugin), cwd=str(suite), env=env)


def _callgrind(sizes: list[int], kinds: list[str], gc_off: bool, seeds: int) -> None:
    print(
        f"python {sys.version.split()[0]}, instructions counted by callgrind, tests {sizes}, "
        f"hash seeds 1-{seeds} (per test: median over the seeds [lowest, highest])"
    )
    with tempfile.TemporaryDirectory(prefix="loopguard-per-test-") as tmp:
        root = Path(tmp)
        suites = {n: _write_suites(root / f"n{n}", n) for n in sorted({1, *sizes})}
        for kind in kinds:
            for gc_on in (True, False) if gc_off else (True,):
                counts = {}
                for n, by_kind in suites.items():
                    suite = by_kind[kind]
                    for plugin in (False, True):
                        _run(suite, suite.parent, plugin)  # compile and cache the bytecode first
                        for seed in range(1, seeds + 1):
                            counts[n, plugin, seed] = _instructions(
                                suite, suite.parent, plugin, gc_on, seed
                            )
                label = kind if gc_on else f"{kind}, gc off"
                fixed = statistics.median(
                    counts[1, True, seed] - counts[1, False, seed] for seed in range(1, seeds + 1)
                )
                print(f"{label:<6} fixed {fixed / 1e6:+.1f} M", flush=True)
                sizes_seen = sorted(suites)
                for lo, hi in itertools.pairwise(sizes_seen):
                    off, on = [], []
                    for seed in range(1, seeds + 1):
                        off.append((counts[hi, False, seed] - counts[lo, False, seed]) / (hi - lo))
                        on.append((counts[hi, True, seed] - counts[lo, True, seed]) / (hi - lo))
                    extra = sorted(b - a for a, b in zip(off, on, strict=True))
                    ratios = sorted(b / a for a, b in zip(off, on, strict=True))
                    print(
                        f"{label:<6} tests {lo:>5} -> {hi:<5} per test "
                        f"{statistics.median(off):10.0f} -> {statistics.median(on):10.0f} "
                        f"instructions ({statistics.median(ratios):.3f}x "
                        f"[{ratios[0]:.3f}, {ratios[-1]:.3f}], "
                        f"{statistics.median(extra):+.0f} [{extra[0]:+.0f}, {extra[-1]:+.0f}])",
                        flush=True,
                    )


def _importtime(suite: Path, root: Path, plugin: bool) -> dict[str, int]:
    """Self time in microseconds of each module imported by one run (``-X importtime``)."""
    cmd = [sys.executable, "-X", "importtime", *_pytest(plugin)[1:]]
    r = subprocess.run(cmd, cwd=suite, env=_env(root), capture_output=True, text=True)
    out = {}
    for line in r.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            fields = line[len("import time:") :].split("|")
            if fields[0].strip().isdigit():
                out[fields[2].strip()] = int(fields[0])
    return out


def _installed_copy(root: Path) -> str:
    """A copy of the loopguard package with Python's bytecode and none of pytest's."""
    import compileall
    import shutil

    import loopguard

    dest = root / "installed"
    src = Path(loopguard.__file__).resolve().parent
    shutil.copytree(src, dest / "loopguard", ignore=shutil.ignore_patterns("__pycache__"))
    compileall.compile_dir(dest, quiet=1)
    return str(dest)


def _startup(rounds: int) -> None:
    print(f"python {sys.version.split()[0]}, a one-test run, with and without -p loopguard")
    with tempfile.TemporaryDirectory(prefix="loopguard-startup-") as tmp:
        root = Path(tmp)
        suite = _write_suites(root, 1)["sync"]
        for cache in (True, False):
            env = dict(_env(root), LOOPGUARD_THRESHOLD="60s")
            if not cache:
                # An installed copy as pip leaves it (Python's bytecode compiled), where pytest's
                # own cache of rewritten modules is never written.
                env["PYTHONDONTWRITEBYTECODE"] = "1"
                env["PYTHONPATH"] = os.pathsep.join((_installed_copy(root), env["PYTHONPATH"]))
            for plugin in (False, True):
                subprocess.run(_pytest(plugin), cwd=suite, env=env, capture_output=True)
            off = instructions(_pytest(False), cwd=str(suite), env=env)
            on = instructions(_pytest(True), cwd=str(suite), env=env)
            label = "bytecode cached" if cache else "pytest's cache not written"
            print(
                f"{label:<26} {off / 1e6:8.1f} M -> {on / 1e6:8.1f} M instructions "
                f"({(on - off) / 1e6:+.1f} M)",
                flush=True,
            )
        runs: dict[str, list[int]] = {}
        plain: set[str] = set()
        for _ in range(rounds):
            plain |= set(_importtime(suite, root, False))
            for name, us in _importtime(suite, root, True).items():
                runs.setdefault(name, []).append(us)
        mine = {n: statistics.median(v) for n, v in runs.items() if n not in plain}
        total = sum(mine.values())
        print(
            f"-X importtime, modules only the plugin's side imports: {len(mine)}, "
            f"{total / 1e3:.1f} ms self time (median of {rounds} runs)"
        )
        for name, us in sorted(mine.items(), key=lambda kv: -kv[1])[:15]:
            print(f"  {us / 1e3:6.2f} ms  {name}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--tests",
        default="2000",
        help="tests per suite (default 2000; --callgrind: sizes, comma-separated)",
    )
    ap.add_argument("--rounds", type=int, default=5, help="runs per side (default 5)")
    ap.add_argument("--load", type=int, default=3, help="CPU-spinning processes (default 3)")
    ap.add_argument("--kinds", default="sync,async", help="suites to run (default sync,async)")
    ap.add_argument("--quiet-only", action="store_true", help="skip the loaded measurement")
    ap.add_argument("--json", metavar="PATH", help="also write the figures to this file")
    ap.add_argument("--callgrind", action="store_true", help="count instructions instead")
    ap.add_argument(
        "--gc-off",
        action="store_true",
        help="--callgrind: also count with the garbage collector off on both sides",
    )
    ap.add_argument(
        "--seeds",
        type=int,
        default=3,
        help="--callgrind: count each run under this many string-hash salts (default 3)",
    )
    ap.add_argument("--startup", action="store_true", help="what loading the plugin costs")
    args = ap.parse_args()
    kinds = [k for k in args.kinds.split(",") if k]
    sizes = [int(n) for n in str(args.tests).split(",") if n]
    if args.startup:
        _startup(args.rounds)
        return
    if args.callgrind:
        if args.seeds < 1:
            ap.error(f"--seeds must be 1 or more, got {args.seeds}")
        _callgrind(sizes, kinds, args.gc_off, args.seeds)
        return
    args.tests = sizes[0]
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
