"""Memory per recorded block: a suite that records N blocks, with and without loopguard.

The suite (generated in a temporary directory) has N / 10 async tests, each blocking its loop
10 times for a little over 2 ms (``time.sleep``), run with ``--loopguard-threshold=1s
--loopguard-record-threshold=2ms --loopguard-mode=record --loopguard-json=...``: every block is
recorded, none fails, and the JSON report is written. The same suite runs without
``-p loopguard`` for comparison. Each pytest process writes its own peak RSS (``ru_maxrss``) at
its end, from a conftest hook: under ``-n 2`` that gives the xdist controller (which holds every
worker's events and writes the report) and each worker.

The figure is ``(peak with loopguard - peak without) / blocks recorded``, per process: the
controller's against the blocks of the whole run, a worker's against the blocks it recorded.

    python benchmarks/memory.py [--events 10000] [--events 100000] [--xdist]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

TESTS = """
import asyncio, time
import pytest

@pytest.mark.parametrize("i", range({tests}))
@pytest.mark.asyncio
async def test_block(i):
    for _ in range(10):
        time.sleep(0.0022)
        await asyncio.sleep(0)
"""

CONFTEST = """
import json, os, resource

def pytest_unconfigure(config):
    who = getattr(config, "workerinput", {{}}).get("workerid", "main")
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with open(os.path.join({out!r}, who + ".json"), "w") as f:
        json.dump({{"peak_kb": peak_kb}}, f)
"""

INI = """
[pytest]
asyncio_default_fixture_loop_scope = function
"""


def run(tmp: Path, events: int, *, loopguard: bool, xdist: bool) -> dict[str, float]:
    out = tmp / ("on" if loopguard else "off")
    out.mkdir(exist_ok=True)
    for f in out.iterdir():
        f.unlink()
    (tmp / "conftest.py").write_text(CONFTEST.format(out=str(out)))
    args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "asyncio"]
    args += ["-p", "xdist", "-n", "2"] if xdist else []
    if loopguard:
        args += [
            "-p",
            "loopguard",
            "--loopguard-threshold=1s",
            "--loopguard-record-threshold=2ms",
            "--loopguard-mode=record",
            f"--loopguard-json={tmp / 'report.json'}",
        ]
    env = dict(os.environ, PYTEST_DISABLE_PLUGIN_AUTOLOAD="1")
    done = subprocess.run(args, cwd=tmp, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"pytest failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return {f.stem: json.loads(f.read_text())["peak_kb"] for f in out.iterdir()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--events", type=int, action="append", help="blocks to record (repeatable)")
    p.add_argument("--xdist", action="store_true", help="run under pytest-xdist -n 2")
    args = p.parse_args()
    for events in args.events or [10_000]:
        with tempfile.TemporaryDirectory() as d:
            tmp = Path(d)
            (tmp / "pytest.ini").write_text(INI)
            (tmp / "test_blocks.py").write_text(TESTS.format(tests=events // 10))
            off = run(tmp, events, loopguard=False, xdist=args.xdist)
            on = run(tmp, events, loopguard=True, xdist=args.xdist)
            report = json.loads((tmp / "report.json").read_text())
            recorded = report["totals"]["events"]
            size = (tmp / "report.json").stat().st_size
            print(f"{events} blocks asked, {recorded} recorded; JSON report {size / 1e6:.1f} MB")
            for who in sorted(on):
                delta_kb = on[who] - off.get(who, 0)
                base = recorded if who == "main" else recorded / max(1, len(on) - 1)
                print(
                    f"  {who:<5} peak RSS {off.get(who, 0) / 1024:7.1f} MB without, "
                    f"{on[who] / 1024:7.1f} MB with loopguard: "
                    f"{delta_kb / max(1, base):6.2f} KB per block"
                )


if __name__ == "__main__":
    main()
