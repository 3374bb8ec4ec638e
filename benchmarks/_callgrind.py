"""Counting instructions with valgrind's callgrind, for the benchmarks' ``--callgrind`` modes."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Callable


def instructions(cmd: list[str], cwd: str | None = None, env: dict[str, str] | None = None) -> int:
    """Instructions ``cmd`` executed under callgrind (all threads); exits when the run fails."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "callgrind.out")
        r = subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *cmd],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
        )
        if r.returncode != 0:
            sys.exit(f"callgrind run of {cmd} failed:\n{r.stderr[-2000:]}")
        with open(out) as f:
            for line in f:
                if line.startswith(("summary:", "totals:")):
                    return int(line.split()[1])
    sys.exit("no instruction count in callgrind's output")


def per_unit(command: Callable[[str, int], list[str]], n: int, header: str) -> None:
    """Prints the instructions per unit of work on each side ("off", "on") and their ratio:
    ``command(side, n)`` (a run of ``n`` units) less ``command(side, 0)`` (its start-up and
    end), divided by ``n``. ``header`` names the interpreter's run and the unit."""
    per = {
        side: (instructions(command(side, n)) - instructions(command(side, 0))) / n
        for side in ("off", "on")
    }
    print(header)
    print(
        f"off {per['off']:,.0f} -> on {per['on']:,.0f} (+{per['on'] - per['off']:,.0f}), "
        f"ratio {per['on'] / per['off']:.3f}"
    )
