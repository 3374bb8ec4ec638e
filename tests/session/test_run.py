"""``python -m loopguard run -- COMMAND``: real programs (a script, trio, a uvicorn server with one
and two workers) run with their loops watched; live reports, the reports at exit, signals, exit
status, ``--fail-on`` and bad options."""

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from loopguard._run import FAIL_ON_STATUS, parse
from loopguard._target import TargetError, resolve_target

httpx = pytest.importorskip("httpx")  # the main suite's (the version matrix installs less)

# Servers and clients from the main suite's requirements: under its Python and pytest only.
pytestmark = [pytest.mark.linux_full, pytest.mark.single_version]

RUN = [sys.executable, "-m", "loopguard", "run"]
TIMEOUT = 60


def run(tmp_path, *args, timeout=TIMEOUT):
    return subprocess.run(
        [*RUN, *args], cwd=tmp_path, capture_output=True, text=True, timeout=timeout
    )


def schema_validate(data):
    """Check a report against docs/report-schema.json with the JSON report tests' validator."""
    path = Path(__file__).resolve().parents[1] / "report" / "test_json_report.py"
    spec = importlib.util.spec_from_file_location("_report_schema_check", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.validate(data, module.SCHEMA)


def line_of(path, marker):
    for i, text in enumerate(path.read_text().splitlines(), 1):
        if marker in text:
            return i
    raise AssertionError(marker)


SCRIPT = """
import asyncio, sys, time

async def handler():
    time.sleep(0.4)  # BLOCKS

async def main():
    await asyncio.sleep(0.05)
    await handler()
    await asyncio.sleep(0.05)
    print("done")

asyncio.run(main())
sys.exit(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
"""


@pytest.fixture
def script(tmp_path):
    path = tmp_path / "prog.py"
    path.write_text(SCRIPT)
    return path


def test_a_script_block_is_reported_live_and_in_the_json_and_the_status_is_the_scripts(
    tmp_path, script
):
    done = run(tmp_path, "--json", "out.json", "--", "python", "prog.py", "7")
    assert done.returncode == 7, done.stderr
    assert done.stdout == "done\n"  # the program's own output, untouched
    line = line_of(script, "# BLOCKS")
    err = done.stderr
    assert "loopguard: event loop blocked for" in err
    assert f"prog.py:{line} in handler" in err
    assert "time.sleep(0.4)  # BLOCKS" in err
    # at exit: the hotspot table and the lag of the loop (asyncio.run's one loop)
    assert "==== loopguard: blocking hotspots ====" in err
    assert err.count("asyncio loop ") == 1, err
    assert "max " in err.split("loop lag")[1]
    data = json.loads((tmp_path / "out.json").read_text())
    (event,) = [e for e in data["events"] if e["outcome"] == "failed"]
    assert event["site"]["line"] == line and event["site"]["function"] == "handler"
    assert event["outcome"] == "failed"
    (loop,) = data["lag"]["loops"]
    assert loop["kind"] == "asyncio" and loop["max_ms"] >= 300
    assert data["runs"][0]["argv"] == ["prog.py", "7"]
    schema_validate(data)


def test_dash_m_runs_a_module_with_its_argv(tmp_path, script):
    done = run(tmp_path, "--", "-m", "prog", "4")
    assert done.returncode == 4, done.stderr
    assert f"prog.py:{line_of(script, '# BLOCKS')} in handler" in done.stderr


def test_fail_on_block_makes_the_status_non_zero(tmp_path, script):
    done = run(tmp_path, "--fail-on=block", "--", "python", "prog.py")
    assert done.returncode == FAIL_ON_STATUS, done.stderr
    assert "--fail-on: 1 block over the threshold" in done.stderr


def test_fail_on_block_leaves_a_clean_run_alone_and_fail_on_lag_needs_a_breach(tmp_path):
    (tmp_path / "calm.py").write_text(
        "import asyncio\nasync def main():\n    await asyncio.sleep(0.3)\nasyncio.run(main())\n"
    )
    done = run(tmp_path, "--fail-on", "block,lag", "--max-lag", "200ms", "--", "calm.py")
    assert done.returncode == 0, done.stderr
    assert "loopguard: no block over the threshold" in done.stderr
    assert "objective under 200 ms" in done.stderr


def test_fail_on_lag_counts_a_lag_under_the_block_threshold(tmp_path):
    # 250 ms blocks: under the 1 s threshold (no block reported) but over the 100 ms objective.
    (tmp_path / "laggy.py").write_text(
        "import asyncio, time\nasync def main():\n    await asyncio.sleep(0.05)\n"
        "    time.sleep(0.25)\n    await asyncio.sleep(0.05)\nasyncio.run(main())\n"
    )
    args = ["--threshold", "1s", "--max-lag", "100ms", "--fail-on", "lag", "--json", "r.json"]
    done = run(tmp_path, *args, "--", "python", "laggy.py")
    assert done.returncode == FAIL_ON_STATUS, done.stderr
    assert "OVER --max-lag" in done.stderr
    assert "over --max-lag 100 ms" in done.stderr
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["totals"]["events"] == 0
    assert data["lag"]["loops"][0]["max_ms"] >= 200


def test_a_trio_block_is_reported(tmp_path):
    path = tmp_path / "trio_prog.py"
    path.write_text(
        textwrap.dedent("""
        import time, trio

        async def main():
            await trio.sleep(0.05)
            time.sleep(0.4)  # TRIO BLOCK
            await trio.sleep(0.05)

        trio.run(main)
        """)
    )
    done = run(tmp_path, "--json", "r.json", "--", sys.executable, "trio_prog.py")
    assert done.returncode == 0, done.stderr
    assert f"trio_prog.py:{line_of(path, '# TRIO BLOCK')} in main" in done.stderr
    assert "trio run" in done.stderr
    assert json.loads((tmp_path / "r.json").read_text())["events"][0]["loop"] == "trio"


def test_a_loop_in_a_thread_is_watched(tmp_path):
    path = tmp_path / "threaded.py"
    path.write_text(
        textwrap.dedent("""
        import asyncio, threading, time

        async def work():
            await asyncio.sleep(0.05)
            time.sleep(0.4)  # THREAD BLOCK

        t = threading.Thread(target=asyncio.run, args=(work(),), name="worker-loop")
        t.start()
        """)
    )
    done = run(tmp_path, "--", "python", "threaded.py")
    assert done.returncode == 0, done.stderr
    assert f"threaded.py:{line_of(path, '# THREAD BLOCK')} in work" in done.stderr
    assert "asyncio loop 1 (thread 'worker-loop')" in done.stderr


FORKS = """
import asyncio, multiprocessing, os, sys, time

async def work():
    await asyncio.sleep(0.05)
    time.sleep(0.4)  # CHILD BLOCK

def child():
    asyncio.run(work())

if __name__ == "__main__":
    if sys.argv[1] == "multiprocessing":
        p = multiprocessing.get_context("fork").Process(target=child)
        p.start()
        p.join(30)
        sys.exit(p.exitcode)
    pid = os.fork()
    if pid == 0:
        child()
        sys.exit(5)
    _, status = os.waitpid(pid, 0)
    sys.exit(os.waitstatus_to_exitcode(status))
"""


@pytest.mark.parametrize(("how", "status"), [("multiprocessing", 0), ("os.fork", 5)])
def test_a_forked_child_is_watched_and_its_report_merged(tmp_path, how, status):
    path = tmp_path / "forks.py"
    path.write_text(FORKS)
    done = run(tmp_path, "--json", "r.json", "--", "python", "forks.py", how)
    assert done.returncode == status, done.stderr
    line = line_of(path, "# CHILD BLOCK")
    assert f"forks.py:{line} in work" in done.stderr
    data = json.loads((tmp_path / "r.json").read_text())
    (event,) = [e for e in data["events"] if e["outcome"] == "failed"]
    assert event["site"]["line"] == line
    child_pids = {run["pid"] for run in data["runs"]} - {data["runs"][0]["pid"]}
    assert len(child_pids) == 1
    assert {loop["pid"] for loop in data["lag"]["loops"]} == child_pids
    schema_validate(data)


def test_a_guard_of_the_program_still_sees_its_blocks(tmp_path):
    (tmp_path / "guarded.py").write_text(
        textwrap.dedent("""
        import asyncio, time, loopguard

        async def main():
            await asyncio.sleep(0.05)
            time.sleep(0.4)  # GUARDED BLOCK
            await asyncio.sleep(0.3)  # the reporter looks meanwhile

        try:
            with loopguard.guard(threshold="100ms"):
                asyncio.run(main())
        except loopguard.LoopBlockedError as e:
            print("guard raised", len(e.events))
        """)
    )
    done = run(tmp_path, "--", "python", "guarded.py")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "guard raised 1\n"
    line = line_of(tmp_path / "guarded.py", "# GUARDED BLOCK")
    live = done.stderr.split("====")[0]
    assert f"guarded.py:{line} in main" in live  # reported live too, once
    assert live.count("loopguard: event loop blocked") == 1, done.stderr


WAITS_FOREVER = """
import asyncio, os, signal, sys, time

# SIGINT as a program started from a terminal has it: one started in the background by a shell
# without job control (nohup ... &, as CI scripts may be) inherits it ignored, and keeps it so.
signal.signal(signal.SIGINT, signal.default_int_handler)

async def main():
    await asyncio.sleep(0.05)
    time.sleep(0.3)  # BEFORE THE SIGNAL
    print("ready", flush=True)
    await asyncio.sleep(60)

asyncio.run(main())
"""


@pytest.mark.parametrize(
    ("signum", "status"), [(signal.SIGTERM, -signal.SIGTERM), (signal.SIGINT, -signal.SIGINT)]
)
def test_a_program_stopped_by_a_signal_reports_and_dies_of_it(tmp_path, signum, status):
    path = tmp_path / "waits.py"
    path.write_text(WAITS_FOREVER)
    proc = subprocess.Popen(
        [*RUN, "--json", "r.json", "--", "python", "waits.py"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline() == "ready\n"
        time.sleep(0.3)  # the block's end reaches the reporter
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=TIMEOUT)
    finally:
        proc.kill()
    assert proc.returncode == status, err
    assert f"waits.py:{line_of(path, '# BEFORE THE SIGNAL')} in main" in err
    data = json.loads((tmp_path / "r.json").read_text())
    assert [e["site"]["line"] for e in data["events"] if e["outcome"] == "failed"] == [
        line_of(path, "# BEFORE THE SIGNAL")
    ]
    assert data["runs"][0]["interrupted"] is True
    assert data["runs"][0]["stopped_by"] == signum.name


THREAD_MASKS = """
import asyncio, os, threading

def masks():
    # Each thread's name and whether it blocks SIGINT and SIGTERM (from the kernel's view).
    out = {}
    for tid in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{tid}/comm") as f:
            name = f.read().strip()
        with open(f"/proc/self/task/{tid}/status") as f:
            mask = int(next(x for x in f if x.startswith("SigBlk")).split()[1], 16)
        bit = lambda sig: bool(mask >> (sig - 1) & 1)
        out[int(tid)] = (name, bit(2), bit(15))
    return out

async def main():
    await asyncio.sleep(0.3)
    for tid, (name, sigint, sigterm) in sorted(masks().items()):
        main = tid == threading.main_thread().native_id
        print("MAIN" if main else "OTHER", name, sigint, sigterm)

asyncio.run(main())
"""


def test_loopguards_threads_leave_the_programs_signals_to_the_program(tmp_path):
    # A signal sent to the process goes to a thread that does not block it; Python runs its
    # handler only on the main thread, which a signal taken by another thread does not wake
    # from its selector: loopguard's threads (watchdog, assistant, reporter) block them all.
    (tmp_path / "masks.py").write_text(THREAD_MASKS)
    done = run(tmp_path, "--", "python", "masks.py")
    assert done.returncode == 0, done.stderr
    rows = [line.split() for line in done.stdout.splitlines()]
    assert [r for r in rows if r[0] == "MAIN"] == [["MAIN", "python", "False", "False"]], rows
    others = [r for r in rows if r[0] == "OTHER"]
    assert {r[1] for r in others} >= {"loopguard-watch", "loopguard-assis"}, rows
    assert len(others) >= 3, rows  # and the reporter, a Python thread
    assert all(r[2:] == ["True", "True"] for r in others), rows


# --- a real server ---------------------------------------------------------------------------

APP = """
import contextvars, time
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

request_id = contextvars.ContextVar("request_id")

async def daily(request):
    request_id.set(request.headers["x-request-id"])
    time.sleep(0.4)  # BLOCKING ENDPOINT
    return PlainTextResponse("daily")

async def health(request):
    return PlainTextResponse("ok")

app = Starlette(routes=[Route("/reports/daily", daily), Route("/health", health)])
"""


def endpoint_blocks(data, line):
    return [e for e in data["events"] if e["site"] and e["site"]["line"] == line]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(proc, url, seconds=30):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the server exited: {proc.communicate()}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.1)
    raise AssertionError("the server did not answer")


def plain_status(tmp_path, signum):
    """The exit status of uvicorn itself, without loopguard, stopped by ``signum``."""
    (tmp_path / "app.py").write_text(APP)
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "app:app", "--port", str(port)],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_ready(proc, f"http://127.0.0.1:{port}/health")
        proc.send_signal(signum)
        return proc.wait(timeout=TIMEOUT)
    finally:
        proc.kill()


def serve(tmp_path, *server_args, signum, requests=3, command=("uvicorn",)):
    (tmp_path / "app.py").write_text(APP)
    port = free_port()
    proc = subprocess.Popen(
        [*RUN, "--json", "r.json", "--context-var", "request_id", "--", *command, "app:app",
         "--host", "127.0.0.1", "--port", str(port), *server_args],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        wait_ready(proc, f"{base}/health")
        for i in range(requests):
            r = httpx.get(f"{base}/reports/daily", headers={"x-request-id": f"req-{i}"}, timeout=10)
            assert r.text == "daily"
        time.sleep(0.5)  # the last block's end reaches the reporter
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=TIMEOUT)
    finally:
        proc.kill()
    return proc.returncode, err, json.loads((tmp_path / "r.json").read_text())


@pytest.mark.parametrize(
    ("signum", "command"),
    [(signal.SIGINT, ("uvicorn",)), (signal.SIGTERM, ("python", "-m", "uvicorn"))],
)
def test_a_uvicorn_server_names_the_endpoint_and_the_request(tmp_path, signum, command):
    expected_status = plain_status(tmp_path, signum)
    status, err, data = serve(tmp_path, signum=signum, command=command)
    line = line_of(tmp_path / "app.py", "# BLOCKING ENDPOINT")
    # each block reported live, with the request it served and its request id
    assert err.count(f"app.py:{line} in daily") >= 3, err
    for i in range(3):
        assert f"request GET /reports/daily (request_id='req-{i}')" in err
    assert "uvloop loop 1 (thread 'MainThread')" in err
    # nothing lost: every request's block is in the JSON, with its context (a busy machine
    # may add a block of the server's start-up)
    daily = endpoint_blocks(data, line)
    assert sorted(e["context"]["vars"]["request_id"] for e in daily) == ["req-0", "req-1", "req-2"]
    assert {e["context"]["request"] for e in daily} == {"GET /reports/daily"}
    schema_validate(data)
    # uvicorn's own ending, as without loopguard
    assert status == expected_status, err


@pytest.mark.slow
def test_uvicorn_workers_are_watched_and_their_reports_merged(tmp_path):
    _, err, data = serve(tmp_path, "--workers", "2", signum=signal.SIGINT, requests=4)
    line = line_of(tmp_path / "app.py", "# BLOCKING ENDPOINT")
    assert err.count(f"app.py:{line} in daily") >= 4, err
    daily = endpoint_blocks(data, line)
    assert len(daily) == 4
    assert {e["context"]["request"] for e in daily} == {"GET /reports/daily"}
    # the supervisor's run and one per worker (each with its loop's lag)
    pids = {loop["pid"] for loop in data["lag"]["loops"]}
    assert len(pids) == 2
    assert len(data["runs"]) >= 3
    # one row for the endpoint in the merged hotspot table: the four blocks of both workers
    table = err.split("==== loopguard: blocking hotspots ====")[1]
    (row,) = [r for r in table.splitlines() if f"app.py:{line} in daily" in r]
    assert row.split()[1] == "4", row
    schema_validate(data)


def test_a_starlette_app_on_any_server_names_the_request(tmp_path):
    # No uvicorn: httpx's ASGI transport calls the app in the client's task.
    (tmp_path / "app.py").write_text(APP)
    (tmp_path / "client.py").write_text(
        textwrap.dedent("""
        import asyncio, httpx
        from app import app

        async def main():
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                r = await client.get("/reports/daily", headers={"x-request-id": "in-process"})
                assert r.text == "daily"

        asyncio.run(main())
        """)
    )
    done = run(tmp_path, "--context-var", "request_id", "--", "python", "client.py")
    assert done.returncode == 0, done.stderr
    line = line_of(tmp_path / "app.py", "# BLOCKING ENDPOINT")
    assert f"app.py:{line} in daily" in done.stderr
    assert "request GET /reports/daily (request_id='in-process')" in done.stderr


OTEL_APP = """
import time
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.responses import PlainTextResponse
from starlette.routing import Route

trace.set_tracer_provider(TracerProvider())
tracer = trace.get_tracer("bench")


class Traced:  # what OpenTelemetry's ASGI middleware does: one span around each request
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        with tracer.start_as_current_span("request") as span:
            ctx = span.get_span_context()
            print(f"SPAN {ctx.trace_id:032x} {ctx.span_id:016x}", flush=True)
            await self.app(scope, receive, send)


async def daily(request):
    time.sleep(0.4)  # TRACED BLOCK
    return PlainTextResponse("daily")

async def health(request):
    return PlainTextResponse("ok")

app = Starlette(
    routes=[Route("/reports/daily", daily), Route("/health", health)],
    middleware=[Middleware(Traced)],
)
"""


def test_opentelemetry_trace_and_span_ids_name_the_request(tmp_path):
    pytest.importorskip("opentelemetry.sdk")
    (tmp_path / "app.py").write_text(OTEL_APP)
    port = free_port()
    proc = subprocess.Popen(
        [*RUN, "--json", "r.json", "--", "uvicorn", "app:app", "--port", str(port)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_ready(proc, f"http://127.0.0.1:{port}/health")
        assert httpx.get(f"http://127.0.0.1:{port}/reports/daily", timeout=10).text == "daily"
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=TIMEOUT)
    finally:
        proc.kill()
    # the span of the blocked request, as the app printed it (after /health's two spans)
    spans = [line.split()[1:] for line in out.splitlines() if line.startswith("SPAN ")]
    trace_id, span_id = spans[-1]
    assert f"request GET /reports/daily trace {trace_id} span {span_id}" in err
    (event,) = endpoint_blocks(
        json.loads((tmp_path / "r.json").read_text()), line_of(tmp_path / "app.py", "# TRACED")
    )
    assert event["context"] == {
        "request": "GET /reports/daily",
        "trace_id": trace_id,
        "span_id": span_id,
    }


# --- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--threshold", "soon", "--", "x.py"], "invalid value for --threshold: 'soon'"),
        (["--max-lag", "0ms", "--", "x.py"], "invalid value for --max-lag: '0ms'"),
        (["--fail-on", "crash", "--", "x.py"], "invalid value for --fail-on: 'crash'"),
        (["--fail-on", "lag", "--", "x.py"], "expected --max-lag too"),
        (["--sampler", "fast", "--", "x.py"], "invalid value for --sampler: 'fast'"),
        (["--gc", "maybe", "--", "x.py"], "invalid value for --gc: 'maybe'"),
        (["--allow", "a:", "--", "x.py"], "invalid allow pattern 'a:' (from --allow)"),
        (["--json", "nodir/r.json", "--", "x.py"], "invalid value for --json"),
        (["--context-var", "not a name", "--", "x.py"], "invalid value for --context-var"),
        ([], "no command to run"),
        (["--", "missing.py"], "missing.py: no such file"),
        (["--", "sh", "-c", "true"], "is not a Python program"),
        (["--", "python", "-X", "dev", "x.py"], "interpreter option '-X'"),
        (["--", "no-such-command-here"], "not found"),
        (["--bogus", "--", "x.py"], "unrecognized arguments: --bogus"),
    ],
)
def test_bad_input_is_a_usage_error_naming_it(tmp_path, args, expected):
    (tmp_path / "x.py").write_text("print('ran')\n")
    done = run(tmp_path, *args)
    assert done.returncode == 2, done
    assert expected in done.stderr
    assert "ran" not in done.stdout


def test_commands_accepted_in_process(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.py").write_text("")
    assert resolve_target(["python3", "-m", "http.server", "1"]).argv == ["http.server", "1"]
    assert resolve_target([sys.executable, "s.py", "a"]).kind == "path"
    assert resolve_target(["-c", "pass", "x"]).argv == ["-c", "x"]
    uvicorn = resolve_target(["uvicorn", "app:app"])
    assert (uvicorn.kind, uvicorn.name) == ("entry_point", "uvicorn.main:main")
    with pytest.raises(TargetError, match="needs a module"):
        resolve_target(["python", "-m"])
    settings, command = parse(["--threshold", "50ms", "--fail-on", "block", "--", "s.py", "-v"])
    assert (settings.threshold, settings.fail_on, command) == (0.05, ("block",), ["s.py", "-v"])
    assert os.environ.get("LOOPGUARD_RUN_CHILD") is None
