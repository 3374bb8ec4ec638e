"""One model, many writers: what the terminal's report shows of a block, the JSON report keeps,
and ``python -m loopguard summary``, ``merge`` and ``html`` show it again from the file, native
frames included."""

import html
import json

import pytest
from loopguard._events import blocking_native, native_frames
from reports import cli, hotspot_table

# Native frames are read on the full Linux build only.
pytestmark = pytest.mark.linux_full

HEADER = """
import asyncio, os, zlib
import pytest
"""

INNER = dict(header=HEADER)

# A compression at level 9 on the loop, in zlib's C code, of as many 8 MB rounds as take this
# machine 0.6 s (measured first, off the loop: one round took 161 ms on a quick, quiet machine;
# the default threshold is 100 ms).
COMPRESS = """
import time

ROUND = os.urandom(1 << 20) * 8
_t = time.perf_counter()
zlib.compress(ROUND, 9)
DATA = ROUND * (int(0.6 / max(time.perf_counter() - _t, 1e-3)) + 1)

@pytest.mark.asyncio
async def test_compress():
    await asyncio.sleep(0)
    zlib.compress(DATA, 9)  # the compression
"""


def test_the_native_frame_the_terminal_names_is_named_from_the_json_report(inner, pytester):
    result = inner.run(
        COMPRESS,
        "--loopguard-native=on",
        "--loopguard-json=report.json",
        "--loopguard-html=session.html",
    )
    result.assert_outcomes(failed=1)
    report = json.loads((pytester.path / "report.json").read_text())
    (event,) = report["events"]
    names = [f["function"] for f in event["native_stack"]]
    assert any(n and "deflate" in n for n in names), event["native_stack"]
    # The blocking operation is the innermost named function outside the C runtime (zlib's,
    # even when the sample caught zlib inside a memcpy on a quick machine), read from the file.
    blocking = blocking_native(native_frames(event["native_stack"]))
    assert "libz" in blocking.library or "zlib" in blocking.library, blocking
    operation = f"{blocking.function} ({blocking.library})"

    terminal = hotspot_table(result.stdout.lines)
    assert len(terminal) == 3, terminal  # header, the row, totals
    line = inner.line("# the compression")
    assert f"test_it.py:{line} in test_compress" in terminal[1]
    assert terminal[1].rstrip().endswith(operation), terminal[1]
    assert "zlib.compress" not in terminal[1]

    # The summary of the JSON report: the very table, row for row.
    assert cli(pytester, "summary", "report.json").stdout.lines == terminal
    # A merged report (of one shard) keeps it too.
    cli(pytester, "merge", "report.json", "-o", "merged.json")
    assert cli(pytester, "summary", "merged.json").stdout.lines == terminal

    # The HTML page, written by the session and from the file: the same page, which names
    # the native function as the blocking operation and shows the native frames.
    cli(pytester, "html", "report.json", "-o", "cli.html")
    page = (pytester.path / "cli.html").read_text()
    assert page == (pytester.path / "session.html").read_text()
    # (After the cause, when there is one: "(waiting for a CPU) " on a loaded machine.)
    assert f"{html.escape(operation)}</code></td>" in page
    assert "native frames below it (most recent call last):" in page
    assert html.escape(blocking.function) in page.split("native frames below it", 1)[1]


# A block with a cause, a hint, callbacks, the GIL released in a system call: every column and
# every line of the terminal's report comes back from the file.
SLEEPS = """
import time

@pytest.mark.asyncio
async def test_sleepy():
    await asyncio.sleep(0)
    time.sleep(0.4)  # the sleep
"""


def test_every_field_of_the_report_reads_back_as_the_session_wrote_it(inner, pytester):
    from loopguard._judge import Verdict

    result = inner.run(SLEEPS, "--loopguard-native=on", "--loopguard-json=report.json")
    result.assert_outcomes(failed=1)
    data = json.loads((pytester.path / "report.json").read_text())
    (entry,) = data["events"]
    # What the session wrote is what the decoder reads and the encoder writes again.
    assert Verdict.from_json(entry).to_json() == entry
    assert entry["syscall"] and entry["gil"] == "released"
    assert entry["began_in"] == "call" and entry["running"] is False
    assert entry["gc_ms"] is not None and entry["native_note"]
    assert cli(pytester, "summary", "report.json").stdout.lines == hotspot_table(
        result.stdout.lines
    )
