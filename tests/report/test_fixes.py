"""The fix for each kind of block, from real blocking calls: a ``fix:`` line under the call site,
``"fix"`` in the JSON report and the HTML hotspot table; library sites named as imports name
them; a blocking-call detector's wrapper (blockbuster's) looked through."""

import json
import os
import sys
import sysconfig

import pytest

pytestmark = [pytest.mark.single_version, pytest.mark.linux_full]  # system call names

INNER = dict(plugins=("trio",))  # a trio test (pytest-trio)

HEADER = """
import asyncio, json, os, socket, sqlite3, subprocess, threading, time, urllib.request

import pytest


def later(seconds, fn, *args):
    # A thread that does fn(*args) once the loop is blocked (it sleeps: no GIL held).
    def run():
        time.sleep(seconds)
        fn(*args)
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t
"""

KINDS = """
@pytest.mark.asyncio
async def test_sleep():
    time.sleep(0.4)  # sleep


@pytest.fixture
def slow_server():
    # A local HTTP server that answers after 0.4 s.
    server = socket.create_server(("127.0.0.1", 0))
    def serve():
        conn, _ = server.accept()
        conn.recv(65536)
        time.sleep(0.4)
        conn.sendall(b"HTTP/1.0 200 OK\\r\\nContent-Length: 2\\r\\n\\r\\nok")
        conn.close()
    threading.Thread(target=serve, daemon=True).start()
    yield server.getsockname()[1]
    server.close()


@pytest.mark.asyncio
async def test_http(slow_server):
    await asyncio.sleep(0)
    urllib.request.urlopen(f"http://127.0.0.1:{slow_server}/", timeout=5).read()  # http


@pytest.mark.asyncio
async def test_socket():
    a, b = socket.socketpair()
    later(0.4, b.send, b"x")
    a.recv(1)  # socket
    a.close(); b.close()


@pytest.fixture
def fifo(tmp_path):
    path = str(tmp_path / "fifo")
    os.mkfifo(path)
    def write():
        with open(path, "w") as f:
            f.write("data")
    later(0.4, write)
    return path


@pytest.mark.asyncio
async def test_fifo(fifo):
    with open(fifo) as f:  # file
        f.read()


@pytest.mark.asyncio
async def test_subprocess():
    subprocess.run(["sleep", "0.4"])  # subprocess


@pytest.mark.asyncio
async def test_event():
    threading.Event().wait(0.4)  # lock


@pytest.mark.asyncio
async def test_cpu():
    end = time.monotonic() + 0.4
    n = 0
    while time.monotonic() < end:  # cpu
        n += 1


BIG = [{"id": i, "name": "x" * 20, "tags": ["a", "b", "c"], "score": i / 7} for i in range(400_000)]


@pytest.mark.asyncio
async def test_json():
    json.dumps(BIG)  # json
"""


def fixes_by_test(pytester):
    report = json.loads((pytester.path / "r.json").read_text())
    return {ev["test"].split("::")[-1]: ev for ev in report["events"]}


@pytest.mark.slow
def test_each_kind_of_block_gets_its_fix(pytester, inner):
    result = inner.run(
        HEADER + KINDS,
        "--loopguard-json=r.json",
        "--loopguard-html=r.html",
        "--loopguard-cpu-wait=include",
        "-v",
    )
    events = fixes_by_test(pytester)
    expected = {
        "test_sleep": "await asyncio.sleep(...) instead of time.sleep",
        "test_http": "an async HTTP client (httpx.AsyncClient, aiohttp) instead of "
        "urllib.request.urlopen",
        "test_socket": "asyncio streams (asyncio.open_connection) or loop.sock_* methods "
        "instead of a blocking socket",
        "test_fifo": "aiofiles or anyio.Path, or await asyncio.to_thread(...), instead of "
        "blocking file I/O",
        "test_subprocess": "await asyncio.create_subprocess_exec(...) instead of subprocess.run",
        "test_event": "an asyncio.Lock/Event/Condition, or await asyncio.to_thread(...) around "
        "the wait, instead of threading.Event.wait",
        "test_cpu": "a process pool (loop.run_in_executor(ProcessPoolExecutor(), ...)) for "
        "CPU-bound work",
        "test_json": "json.dumps of large data in a process pool (json holds the GIL: a thread "
        "stalls the loop too), or less at a time",
    }
    assert {t: events[t]["fix"] if t in events else None for t in expected} == expected
    result.assert_outcomes(failed=len(expected))
    # Under each call site in the failure report.
    for test, fix in expected.items():
        site = events[test]["site"]
        result.stdout.fnmatch_lines(
            [f"    test_it.py:{site['line']} in {site['function']}", f"    fix: {fix}"]
        )
    # Under each row of the hotspot table with -v, and in the HTML page's hotspot table.
    result.stdout.fnmatch_lines(
        ["* failed *test_it.py:*in test_sleep *", f"    fix: {expected['test_sleep']}"]
    )
    page = (pytester.path / "r.html").read_text()
    assert '<th scope="col">fix</th>' in page
    assert "<td>await asyncio.sleep(...) instead of time.sleep</td>" in page


SQLITE = """
@pytest.mark.asyncio
async def test_sqlite():
    db = sqlite3.connect(":memory:")
    db.execute(  # the query
        "WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r WHERE i < 4000000) "
        "SELECT sum(i) FROM r"
    ).fetchall()
"""


def test_a_sqlite3_query_is_told_by_its_native_frames(pytester, inner):
    result = inner.run(HEADER + SQLITE, "--loopguard-json=r.json", "--loopguard-native=on")
    result.assert_outcomes(failed=1)
    fix = fixes_by_test(pytester)["test_sqlite"]["fix"]
    assert fix == (
        "aiosqlite, or the query in a thread (await asyncio.to_thread(...)), instead of sqlite3"
    )
    result.stdout.fnmatch_lines([f"    fix: {fix}"])


def test_without_native_frames_a_sqlite3_query_is_c_code_that_releases_the_gil(pytester, inner):
    result = inner.run(HEADER + SQLITE, "--loopguard-json=r.json")
    result.assert_outcomes(failed=1)
    fix = fixes_by_test(pytester)["test_sqlite"]["fix"]
    assert fix == (
        "a thread (await asyncio.to_thread(...), or anyio.to_thread.run_sync): the call "
        "releases the GIL"
    )


TRIO = """
import trio


@pytest.mark.trio
async def test_trio_sleep():
    await trio.sleep(0)
    time.sleep(0.4)  # sleep


@pytest.mark.trio
async def test_trio_subprocess():
    subprocess.run(["sleep", "0.4"])  # subprocess
"""


def test_a_trio_run_is_told_trios_counterparts(pytester, inner):
    result = inner.run(HEADER + TRIO, "--loopguard-json=r.json")
    result.assert_outcomes(failed=2)
    events = fixes_by_test(pytester)
    assert events["test_trio_sleep"]["fix"] == "await trio.sleep(...) instead of time.sleep"
    assert events["test_trio_subprocess"]["fix"] == (
        "await trio.run_process(...) instead of subprocess.run"
    )
    result.stdout.fnmatch_lines(["    fix: await trio.sleep(...) instead of time.sleep"])


# --- sites a reader recognises -----------------------------------------------------------------

INTERPRETER_DIRS = sorted(
    {
        os.path.realpath(p)
        for p in (
            sys.prefix,
            sys.base_prefix,
            sys.exec_prefix,
            sysconfig.get_paths()["stdlib"],
            sysconfig.get_paths()["purelib"],
        )
    }
)

STDLIB_ONLY = """
@pytest.mark.asyncio
async def test_callback():
    asyncio.get_running_loop().call_soon(time.sleep, 0.4)
    await asyncio.sleep(0.6)
"""


def test_a_block_entirely_in_the_stdlib_is_named_as_an_import_names_it(
    pytester, inner, monkeypatch
):
    monkeypatch.setenv("COLUMNS", "200")  # the short summary line whole
    result = inner.run(HEADER + STDLIB_ONLY, "--loopguard-json=r.json")
    result.assert_outcomes(failed=1)
    line = fixes_by_test(pytester)["test_callback"]["site"]["line"]
    lines = result.stdout.lines
    start = next(i for i, t in enumerate(lines) if t.startswith("loopguard: event loop blocked"))
    end = lines.index("  Python stack of the loop thread (most recent call last):", start)
    header = lines[start:end]
    assert header[2] == f"    asyncio/events.py:{line} in Handle._run", header
    assert "    fix: await asyncio.sleep(...) instead of time.sleep" in header
    row = next(t for t in lines if " failed " in t and "in Handle._run" in t)
    assert f"  asyncio/events.py:{line} in Handle._run  " in row
    short = next(t for t in lines if t.startswith("FAILED test_it.py::test_callback"))
    assert f"at asyncio/events.py:{line} in Handle._run" in short
    for text in [*header, row, short]:
        assert not any(d in text for d in INTERPRETER_DIRS), text


# --- a blocking-call detector's wrapper --------------------------------------------------------

BLOCKBUSTER = """
from blockbuster import blockbuster_ctx


@pytest.fixture
def blockbuster():
    # blockbuster patches the blocking functions (time.sleep, locks, sockets, files...) with a
    # wrapper that raises when they are called from the modules it scans: here app, which these
    # tests do not call, so that the wrapped calls go on and loopguard sees them block.
    with blockbuster_ctx(["app"]) as bb:
        assert time.sleep.__module__ == "blockbuster.blockbuster"
        yield bb


@pytest.mark.asyncio
async def test_sleep(blockbuster):
    time.sleep(0.4)  # sleep


@pytest.mark.asyncio
async def test_event(blockbuster):
    threading.Event().wait(0.4)  # lock
"""


def test_blockbusters_wrapper_is_looked_through_to_the_wrapped_call(pytester, inner):
    result = inner.run(HEADER + BLOCKBUSTER, "--loopguard-json=r.json", app="")
    result.assert_outcomes(failed=2)
    events = fixes_by_test(pytester)
    # The wrapper is on the stack the watchdog read...
    for ev in events.values():
        assert ev["stack"][-1]["file"].endswith("blockbuster/blockbuster.py"), ev["stack"]
    # ...but the operation is the wrapped call: none for time.sleep (a C function called at the
    # site), threading's Condition.wait for the event.
    assert events["test_sleep"]["operation"] is None
    assert events["test_event"]["operation"]["function"] == "Condition.wait"
    assert events["test_sleep"]["fix"] == "await asyncio.sleep(...) instead of time.sleep"
    assert events["test_event"]["fix"].endswith("instead of threading.Event.wait")
    sleep_line = inner.line("# sleep")
    result.stdout.fnmatch_lines(
        [
            f"    test_it.py:{sleep_line} in test_sleep",
            "  >     time.sleep(0.4)  # sleep",
            "    fix: await asyncio.sleep(...) instead of time.sleep",
            "",
            "  Python stack of the loop thread (most recent call last):",
            f'    File "test_it.py", line {sleep_line}, in test_sleep',
            "      time.sleep(0.4)  # sleep",
            "    ... 1 frame in blockbuster ...",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            f"    blocked in threading.py:* in Condition.wait, called from "
            f"test_it.py:{inner.line('# lock')} in test_event",
        ]
    )
    text = result.stdout.str()
    # Nowhere in the report but the full stack's frames (--loopguard-stack=full).
    assert "_wrap_blocking" not in text
