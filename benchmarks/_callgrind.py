"""Counting instructions with valgrind's callgrind, for the benchmarks' ``--callgrind`` modes."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile


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
