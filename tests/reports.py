"""What a session reports, read back: its hotspot table, and ``python -m loopguard``'s commands
run on its report files."""

import sys


def hotspot_table(lines):
    """The lines of the session's hotspot table (``lines`` of its output) below the title: the
    header, the rows, the totals and the baseline's fixed sites."""
    start = next(i for i, s in enumerate(lines) if "loopguard: blocking hotspots" in s)
    out = []
    for text in lines[start + 1 :]:
        if text.startswith(("loopguard:", "=")):
            break
        out.append(text)
    return out


def cli(pytester, *args):
    """``python -m loopguard ARGS`` in pytester's directory, which must succeed."""
    result = pytester.run(sys.executable, "-m", "loopguard", *args)
    assert result.ret == 0, result.stderr.str()
    return result
