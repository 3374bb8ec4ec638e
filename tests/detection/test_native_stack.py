"""End to end: ``--loopguard-native=on`` shows the native frames below the Python frame that made
a C call, and taking them changes nothing for the code under test."""

import json
import os

import pytest

# Native frames are read on the full Linux build only (the portable path notes why not).
pytestmark = pytest.mark.linux_full

HEADER = """
import asyncio, os, re, sqlite3, time, zlib
import pytest
"""


INNER = dict(header=HEADER, args=("--loopguard-json=report.json",))


def native_names(pytester):
    """The function names (library for a frame without one) of each event's native stack."""
    report = json.loads((pytester.path / "report.json").read_text())
    return [
        ([f["function"] or f["library"] for f in ev["native_stack"]], ev["native_note"])
        for ev in report["events"]
    ]


def longest(pytester):
    report = json.loads((pytester.path / "report.json").read_text())
    ev = max(report["events"], key=lambda e: e["duration_ms"])
    return ev, [f["function"] or f"{f['library']}+{f['offset']:#x}" for f in ev["native_stack"]]


# Each block lasts 0.5-3 s here; the threshold is the default 100 ms. The query counts as far
# as this machine takes half a second to (measured first, off the loop): a fixed count took
# under 100 ms on a quick, quiet machine.
SQLITE = """
COUNT = (
    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < ?) "
    "SELECT sum(x) FROM c"
)

@pytest.fixture
def rows():
    con = sqlite3.connect(":memory:")
    n = 100_000
    while True:
        t = time.perf_counter()
        con.execute(COUNT, (n,)).fetchone()
        if time.perf_counter() - t >= 0.5:
            return n
        n *= 2

@pytest.mark.asyncio
async def test_query(rows):
    await asyncio.sleep(0)
    con = sqlite3.connect(":memory:")
    con.execute(
        COUNT, (rows,)
    ).fetchone()  # the query
"""


def test_a_sqlite3_query_shows_sqlite3_step(inner, pytester):
    result = inner.run(SQLITE, "--loopguard-native=on")
    result.assert_outcomes(failed=1)
    ev, names = longest(pytester)
    assert "sqlite3_step" in names, ev
    # Below the sqlite3 module's own C functions, down from the call the query was made with.
    libraries = [f["library"] for f in ev["native_stack"]]
    assert libraries[-1].startswith("_sqlite3"), libraries
    assert names.index("sqlite3_step") < libraries.index(libraries[-1]), names
    result.stdout.fnmatch_lines(
        [
            "*con.execute(",
            "      native frames below it (most recent call last):",
            "        * (_sqlite3*",
            "        sqlite3_step (libsqlite3.so*",
        ]
    )
    # The hotspot table names the C function the query blocked in.
    result.stdout.fnmatch_lines(["*test_it.py:* in test_query*(libsqlite3.so*"])


def test_zlib_compression_shows_deflate(inner, pytester):
    result = inner.run(
        """
DATA = os.urandom(1 << 20) * 8

@pytest.mark.asyncio
async def test_compress():
    await asyncio.sleep(0)
    zlib.compress(DATA, 9)
""",
        "--loopguard-native=on",
    )
    result.assert_outcomes(failed=1)
    ev, names = longest(pytester)
    assert "deflate" in names, ev
    # The interpreter's frames are folded: the outermost native frame is zlib's own.
    assert "zlib" in ev["native_stack"][-1]["library"], ev["native_stack"]
    assert not any(n.startswith("_PyEval") for n in names), names


def test_time_sleep_shows_clock_nanosleep_without_interrupting_it(inner, pytester):
    result = inner.run(
        """
@pytest.mark.asyncio
async def test_sleepy():
    await asyncio.sleep(0)
    t = time.monotonic()
    time.sleep(0.5)
    assert time.monotonic() - t >= 0.5
""",
        "--loopguard-native=on",
    )
    result.assert_outcomes(failed=1)
    ev, names = longest(pytester)
    # time.sleep waits in clock_nanosleep from CPython 3.11 on, in select before.
    assert any("clock_nanosleep" in n or "select" in n for n in names), ev
    assert "system call" in ev["native_note"], ev
    result.stdout.fnmatch_lines(["*(native frames: in a system call*"])


def test_a_catastrophic_regex_shows_the_regex_engine(inner, pytester):
    result = inner.run(
        """
@pytest.mark.asyncio
async def test_regex():
    await asyncio.sleep(0)
    re.match(r"(a+)+$", "a" * 24 + "b")  # 0.3-2 s: each "a" doubles it
""",
        "--loopguard-native=on",
    )
    result.assert_outcomes(failed=1)
    ev, names = longest(pytester)
    frames = ev["native_stack"]
    assert frames, ev
    if all(f["function"] is None for f in frames):
        # An interpreter without a symbol table (a stripped distribution build): the frames
        # are still there, named by their library.
        assert "python" in frames[0]["library"], frames
    else:
        assert any("sre" in n.lower() for n in names), names


# Two compressions (each 0.3-2 s), one with a marker (its ``native=`` value to fill in).
DEFAULT_AND_MARKED = """
DATA = os.urandom(1 << 20) * 8

@pytest.mark.asyncio
async def test_default():
    await asyncio.sleep(0)
    zlib.compress(DATA, 9)

@pytest.mark.loopguard(native=%s)
@pytest.mark.asyncio
async def test_marked():
    await asyncio.sleep(0)
    zlib.compress(DATA, 9)
"""


def by_test_name(pytester):
    report = json.loads((pytester.path / "report.json").read_text())
    return report, {ev["test"].rsplit("::", 1)[1]: ev for ev in report["events"]}


def test_off_by_default_and_the_marker_turns_it_on(inner, pytester):
    result = inner.run(DEFAULT_AND_MARKED % '"on"')
    result.assert_outcomes(failed=2)
    report, by_test = by_test_name(pytester)
    assert by_test["test_default"]["native_stack"] == []
    assert by_test["test_default"]["native_note"] is None
    assert "deflate" in [f["function"] for f in by_test["test_marked"]["native_stack"]]
    assert report["settings"]["native"] == "off"


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (["--loopguard-native=maybe"], {}, "*--loopguard-native: 'maybe' (from the command line)*"),
        ([], {"LOOPGUARD_NATIVE": "yes"}, "*LOOPGUARD_NATIVE: 'yes' (from the environment)*"),
    ],
)
def test_an_invalid_value_is_a_usage_error_naming_it(
    inner, pytester, monkeypatch, args, env, expected
):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    result = inner.run("def test_nothing():\n    pass\n", *args, inprocess=True)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*invalid value for " + expected + "expected one of off, on*"])


def test_the_command_line_beats_the_environment_and_the_marker_beats_both(
    inner, pytester, monkeypatch
):
    monkeypatch.setenv("LOOPGUARD_NATIVE", "on")
    result = inner.run(DEFAULT_AND_MARKED % "True", "--loopguard-native=off")
    result.assert_outcomes(failed=2)
    _, by_test = by_test_name(pytester)
    assert by_test["test_default"]["native_stack"] == []
    assert by_test["test_marked"]["native_stack"]


STRESS_SECONDS = float(os.environ.get("LOOPGUARD_STRESS_SECONDS", "3"))


def test_repeated_captures_change_nothing_for_the_code_under_test(inner, pytester):
    """Many captures of a loop thread that alternates CPU-bound C code with system calls that a
    signal would interrupt (nanosleep, poll, a pipe read), called through ctypes so that nothing
    retries them, while other threads do I/O: every call returns as it would have, every result
    is right, and the process does not crash."""
    result = inner.run(
        f"""
import ctypes, hashlib, socket, threading
from loopguard import _native

LIBC = ctypes.CDLL(None, use_errno=True)

class Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]

def raw_sleep(ns):
    ts = Timespec(0, ns)
    if LIBC.nanosleep(ctypes.byref(ts), None) != 0:
        raise OSError(ctypes.get_errno(), "nanosleep failed")

def raw_poll(ms):
    if LIBC.poll(None, 0, ms) != 0:
        raise OSError(ctypes.get_errno(), "poll failed")

def io_worker(stop, errors):
    a, b = socket.socketpair()
    a.settimeout(0.5)
    try:
        while not stop.is_set():
            b.sendall(b"x" * 4096)
            got = 0
            while got < 4096:
                got += len(a.recv(4096))
            r, w = os.pipe()
            os.write(w, b"y")
            assert os.read(r, 1) == b"y"
            os.close(r); os.close(w)
            time.sleep(0.001)
    except BaseException as e:
        errors.append(repr(e))
    finally:
        a.close(); b.close()

DATA = os.urandom(1 << 16) * 64  # 4 MB: most of each block is in zlib, on a fast machine too
EXPECTED = hashlib.sha256(zlib.compress(DATA, 6)).hexdigest()

@pytest.mark.asyncio
async def test_stress():
    stop, errors = threading.Event(), []
    workers = [threading.Thread(target=io_worker, args=(stop, errors)) for _ in range(2)]
    for t in workers:
        t.start()
    r, w = os.pipe()
    deadline = time.monotonic() + {STRESS_SECONDS}
    rounds = 0
    try:
        while time.monotonic() < deadline:
            await asyncio.sleep(0)
            # One block: CPU-bound C code, then calls that wait in the kernel.
            assert hashlib.sha256(zlib.compress(DATA, 6)).hexdigest() == EXPECTED
            for _ in range(10):
                raw_sleep(1_000_000)
                raw_poll(1)
                os.write(w, b"z")
                assert os.read(r, 1) == b"z"
            rounds += 1
    finally:
        stop.set()
        for t in workers:
            t.join()
        os.close(r); os.close(w)
    assert not errors, errors
    assert rounds >= 3
    # A call the signal interrupts is restarted in the handler; none may be left failed.
    restarted, lost = _native._native_interrupted_calls()
    assert lost == 0, (restarted, lost)
""",
        "--loopguard-native=on",
        "--loopguard-threshold=20ms",
        "--loopguard-mode=record",
    )
    result.assert_outcomes(passed=1)
    stacks = native_names(pytester)
    assert len(stacks) >= 3, stacks
    # Some block was read inside the zlib call: in deflate, or in the zlib module's own code
    # around it (copying its output buffer), whichever the samples caught most.
    assert any(
        "deflate" in n or n.startswith("zlib_") for names, _ in stacks for n in filter(None, names)
    ), stacks


def test_guard_takes_native_frames_when_asked_and_restores_the_setting():
    import asyncio
    import zlib

    import loopguard
    from loopguard import _native

    data = os.urandom(1 << 20) * 8

    async def compress():
        await asyncio.sleep(0)
        zlib.compress(data, 9)

    assert not _native.native_stacks()
    with pytest.raises(loopguard.LoopBlockedError) as exc:
        with loopguard.guard(native="on"):
            asyncio.run(compress())
    assert not _native.native_stacks()  # as it was before the block
    (ev,) = exc.value.events
    names = [f.function or f.library for f in ev.native_stack]
    assert any("deflate" in n for n in names), (names, ev.native_note)
    assert "native frames below it" in str(exc.value)

    # Without native=, the block keeps the setting around it: off here, so no frames.
    with pytest.raises(loopguard.LoopBlockedError) as exc:
        with loopguard.guard():
            asyncio.run(compress())
    (ev,) = exc.value.events
    assert ev.native_stack == []
