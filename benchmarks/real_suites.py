"""Small real suites with and without loopguard: aiosqlite's, httpx's and starlette's own tests.

Each project's source distribution is fetched from PyPI (``pip download --no-binary``) and
unpacked in a work directory under /tmp (default ``/tmp/loopguard-real-suites``), never in the
repository. Its test dependencies go into a throwaway virtual environment of its own there,
with a copy of the loopguard package this interpreter imports (``pytest_plugin/loopguard`` of
a checkout, its native module included). Each suite then runs from its unpacked directory,
with plain pytest and with ``-p loopguard``, alternating which side goes first, ``--rounds``
times; the figures are medians per side: wall time of the process and its CPU time (user +
system, all threads).
The suite's own pytest plugins are loaded as its developers have them (autoloading on:
anyio's), on both sides.

The threshold is ``--threshold`` (default 5 s, through ``LOOPGUARD_THRESHOLD``), so that a
loaded machine's stalls are not judged as blocks: what is measured is what loopguard costs a
suite in which nothing blocks, not the cost of reporting blocks.

A shared machine's load moves wall time by more than the 2 % to be seen: the load average is
printed with the figures. So can the garbage collector: a suite that ends a few hundred objects
short of a full collection gets one (over ten milliseconds, the GIL held) from any plugin that
keeps a few hundred objects more; the collector's runs in one run per side are printed too.
``--control`` runs plain pytest as a third side, interleaved with the other two: its ratio to
the first is what the machine alone moves between two sides that run the same thing.

Where the machine moves single runs by more than that, more rounds tell it apart: each round's
runs follow one another, so the ratio of one side to plain pytest *within a round* cancels the
machine's slower and faster stretches. The median of those paired ratios is printed with its 95 %
interval (a bootstrap over the rounds, seeded: the same runs give the same interval), and
"within 1.02x" only when the whole interval is below 1.02. Run ``--control`` with it: the
control's interval should hold 1.0; when it does not, the rounds were not enough to even out the
machine, and neither interval is to be trusted.

``--callgrind`` also counts the instructions (valgrind's callgrind)
of a part of each suite (a few of its files: a whole suite under valgrind takes too long) on
each side, once: the main thread's (pytest, the tests, their loops), a ratio that the
machine's load cannot move, and the other threads' apart (the suite's own, loopguard's
watchdog: how often a thread wakes depends on how long the run takes, and a run under
valgrind takes 50 times as long).

    python benchmarks/real_suites.py [--suites aiosqlite,httpx,starlette] [--rounds 5]
        [--control] [--callgrind] [--workdir /tmp/loopguard-real-suites] [--threshold 5s]
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Suite:
    name: str
    version: str
    install: tuple[str, ...]
    """What its tests need, as pip requirements (the project itself is imported from the
    unpacked source, the test run's directory)."""
    args: tuple[str, ...]
    """What pytest is given, from the unpacked directory."""
    part: tuple[str, ...]
    """The part run under callgrind."""


SUITES = {
    s.name: s
    for s in (
        Suite(
            "aiosqlite",
            "0.22.1",
            (),
            ("aiosqlite/tests/smoke.py",),
            ("aiosqlite/tests/smoke.py",),
        ),
        Suite(
            "httpx",
            "0.29.0",
            (
                "httpx[brotli,zstd,cli,http2,socks]==0.29.0",
                "trustme",
                "uvicorn",
                "chardet",
                "trio",
            ),
            ("tests",),
            ("tests/client/test_async_client.py", "tests/test_asgi.py"),
        ),
        Suite(
            "starlette",
            "1.10.0",
            ("starlette[full]==1.10.0", "opentelemetry-sdk", "trio", "blockbuster", "httpx2"),
            ("tests",),
            ("tests/test_responses.py",),
        ),
    )
}

BASE = ("pytest", "anyio")


def _venv(work: Path, suite: Suite) -> Path:
    """The suite's throwaway environment: pytest, its dependencies, a copy of loopguard."""
    import loopguard

    venv = work / f"venv-{suite.name}"
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    reqs = [*BASE, *suite.install]
    subprocess.run([str(python), "-m", "pip", "install", "-q", *reqs], check=True)
    site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    dest = site / "loopguard"
    shutil.rmtree(dest, ignore_errors=True)
    src = Path(loopguard.__file__).resolve().parent
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("__pycache__"))
    return python


def _unpack(work: Path, suite: Suite) -> Path:
    """The suite's source distribution, fetched and unpacked (once)."""
    where = work / f"{suite.name}-{suite.version}"
    if where.exists():
        return where
    dl = work / "sdists"
    dl.mkdir(parents=True, exist_ok=True)
    spec = f"{suite.name}=={suite.version}"
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:"]
    subprocess.run([*cmd, "-d", str(dl), spec], check=True)
    with tarfile.open(dl / f"{suite.name}-{suite.version}.tar.gz") as tar:
        tar.extractall(work, filter="data")
    return where


def _env(threshold: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOOPGUARD_", "PYTEST_"))}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.pop("PYTHONPATH", None)
    env["LOOPGUARD_THRESHOLD"] = threshold
    return env


def _cmd(python: Path, args: tuple[str, ...], plugin: bool) -> list[str]:
    cmd = [str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", *args]
    return [*cmd, "-p", "loopguard"] if plugin else cmd


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, float, str]:
    """(wall, cpu) seconds of one run, and its last line (pytest's outcome)."""
    cpu0 = _children_cpu()
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    lines = r.stdout.strip().splitlines()
    return wall, _children_cpu() - cpu0, lines[-1] if lines else r.stderr[-300:].strip()


def _thread_instructions(cmd: list[str], cwd: Path, env: dict[str, str]) -> list[int]:
    """Instructions of each thread of ``cmd`` under callgrind, the main thread's first."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "callgrind.out")
        r = subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                "--separate-threads=yes",
                f"--callgrind-out-file={out}",
                *cmd,
            ],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
        )
        if r.returncode not in (0, 1):  # tests may fail (the same on both sides)
            sys.exit(f"callgrind run of {cmd} failed:\n{r.stderr[-2000:]}")
        counts = []
        for name in sorted(os.listdir(tmp)):
            with open(os.path.join(tmp, name)) as f:
                for line in f:
                    if line.startswith(("summary:", "totals:")):
                        counts.append(int(line.split()[1]))
                        break
        return counts


COUNT_COLLECTIONS = """\
import gc, os

def pytest_unconfigure(config):
    with open(os.environ["REAL_SUITES_GC"], "w") as f:
        f.write(" ".join(str(g["collections"]) for g in gc.get_stats()))
"""


def _collections(cmd: list[str], cwd: Path, env: dict[str, str]) -> str:
    """The garbage collector's runs in one run of ``cmd``, young/middle/full (``gc.get_stats()``
    at the session's end, through a plugin of a few lines loaded first, on both sides)."""
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "real_suites_gc.py").write_text(COUNT_COLLECTIONS)
        out = Path(tmp, "collections")
        run_env = {**env, "PYTHONPATH": tmp, "REAL_SUITES_GC": str(out)}
        subprocess.run(
            [*cmd[:3], "-p", "real_suites_gc", *cmd[3:]], cwd=cwd, env=run_env, capture_output=True
        )
        return "/".join(out.read_text().split()) if out.exists() else "?"


def _paired(off: list[float], on: list[float], goal: float = 1.02) -> str:
    """The median of the rounds' paired ratios ``on / off`` (runs of one round follow one
    another), with a bootstrap 95 % interval of that median."""
    ratios = [b / a for a, b in zip(off, on, strict=True)]
    rng = random.Random(0)
    medians = sorted(statistics.median(rng.choices(ratios, k=len(ratios))) for _ in range(2000))
    low, high = medians[len(medians) * 25 // 1000], medians[len(medians) * 975 // 1000]
    if high < goal:
        verdict = f"within {goal:.2f}x"
    elif low > goal:
        verdict = f"over {goal:.2f}x"
    else:
        verdict = f"{goal:.2f}x inside the interval: more rounds, or a quieter machine"
    return (
        f"paired {statistics.median(ratios):.3f}x, 95 % interval {low:.3f}-{high:.3f}x "
        f"over {len(ratios)} rounds: {verdict}"
    )


def _load() -> str:
    return "load average " + " ".join(f"{x:.1f}" for x in os.getloadavg())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--suites", default=",".join(SUITES), help="comma-separated")
    ap.add_argument("--rounds", type=int, default=5, help="runs per side (default 5)")
    ap.add_argument("--workdir", default="/tmp/loopguard-real-suites")
    ap.add_argument("--threshold", default="5s", help="LOOPGUARD_THRESHOLD (default 5s)")
    ap.add_argument("--callgrind", action="store_true", help="also count instructions")
    ap.add_argument(
        "--control",
        action="store_true",
        help="also run plain pytest as a third side: the noise between two identical sides",
    )
    args = ap.parse_args()
    suites = [SUITES[n] for n in args.suites.split(",") if n]
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    dirs = {s.name: _unpack(work, s) for s in suites}
    env = _env(args.threshold)
    print(f"python {sys.version.split()[0]}, {args.rounds} rounds per side, {_load()}")
    pythons = {s.name: _venv(work, s) for s in suites}
    for s in suites:
        cwd, python = dirs[s.name], pythons[s.name]
        outcome = {}
        for plugin in (False, True):  # warm-up: bytecode caches written, outcome shown
            outcome[plugin] = _run(_cmd(python, s.args, plugin), cwd, env)[2]
        print(f"{s.name} {s.version}: {outcome[False]}  |  with loopguard: {outcome[True]}")
        gcs = {plugin: _collections(_cmd(python, s.args, plugin), cwd, env) for plugin in (0, 1)}
        print(f"  collector runs (young/middle/full, one run): {gcs[0]} -> {gcs[1]}")
        # Sides: plain pytest, loopguard and, with --control, plain pytest once more (what the
        # machine alone moves between two sides that run the same thing); each round rotates
        # which goes first.
        sides = [("off", False), ("on", True)] + ([("again", False)] if args.control else [])
        walls: dict[str, list[float]] = {name: [] for name, _ in sides}
        cpus: dict[str, list[float]] = {name: [] for name, _ in sides}
        for i in range(args.rounds):
            for name, plugin in sides[i % len(sides) :] + sides[: i % len(sides)]:
                wall, cpu, _ = _run(_cmd(python, s.args, plugin), cwd, env)
                walls[name].append(wall)
                cpus[name].append(cpu)
        w0, c0 = statistics.median(walls["off"]), statistics.median(cpus["off"])
        for name, label in (("on", "loopguard"), ("again", "plain again (control)")):
            if name not in walls:
                continue
            w1, c1 = statistics.median(walls[name]), statistics.median(cpus[name])
            print(
                f"  {label}: wall {w0:.3f} s -> {w1:.3f} s ({w1 / w0:.3f}x)   "
                f"cpu {c0:.3f} s -> {c1:.3f} s ({c1 / c0:.3f}x)   {_load()}",
                flush=True,
            )
            print(f"    wall {_paired(walls['off'], walls[name])}")
        for name, _ in sides:
            print(f"  wall runs {name:5} {sorted(round(w, 2) for w in walls[name])}")
        if args.callgrind:
            counts = {
                plugin: _thread_instructions(_cmd(python, s.part, plugin), cwd, env)
                for plugin in (False, True)
            }
            off, on = counts[False][0], counts[True][0]
            print(
                f"  callgrind, {' '.join(s.part)}: main thread {off / 1e6:.1f} M -> "
                f"{on / 1e6:.1f} M instructions ({on / off:.4f}x, {(on - off) / 1e6:+.1f} M); "
                f"other threads {sum(counts[False][1:]) / 1e6:.1f} M -> "
                f"{sum(counts[True][1:]) / 1e6:.1f} M",
                flush=True,
            )


if __name__ == "__main__":
    main()
