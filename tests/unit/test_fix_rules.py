"""The fix for each kind of block: the rule table of ``loopguard._fixes`` on hand-built events
(in-process, no watchdog); library paths as reports show them; wrappers looked through."""

import dataclasses
import os
import sysconfig
from pathlib import Path

import pytest
from loopguard import BlockEvent, Frame
from loopguard._decode import site_of
from loopguard._events import NativeFrame
from loopguard._failure import Fold, fold_stack, format_event
from loopguard._files import is_wrapper, library_path, shown_path
from loopguard._fixes import RULES, Facts, Rule, classify, facts_of, fix_for

STDLIB = sysconfig.get_paths()["stdlib"]
SITE_PACKAGES = "/venv/lib/python3.12/site-packages"

RUNNER = Frame("/proj/tests/test_upload.py", 12, "test_upload")
SITE = Frame("/proj/app/handlers.py", 30, "handle", "do_it()")


def std(path, line, function):
    return Frame(os.path.join(STDLIB, *path.split("/")), line, function)


def lib(path, line, function):
    return Frame(os.path.join(SITE_PACKAGES, *path.split("/")), line, function)


PYTEST = lib("_pytest/python.py", 187, "pytest_pyfunc_call")
WRAPPER = lib("blockbuster/blockbuster.py", 111, "_wrap_blocking.<locals>.wrapper")
DISPATCH = [
    std("asyncio/base_events.py", 607, "BaseEventLoop.run_forever"),
    std("asyncio/base_events.py", 1922, "BaseEventLoop._run_once"),
    std("asyncio/events.py", 80, "Handle._run"),
]


def event(*below, site=SITE, source=None, outer=(RUNNER,), **fields):
    """A block at ``site`` (its line: ``source``) that called ``below``; ``fields`` set the
    rest (``gil``, ``syscall``, ``native_stack``, ``cause``, ``starved``, ``loop_kind``...)."""
    if site is not None and source is not None:
        site = Frame(site.filename, site.lineno, site.function, source)
    stack = [*outer, *([site] if site is not None else []), *below]
    ev = BlockEvent(
        id=1, duration=0.4, threshold=0.1, thread_name="MainThread", thread_ident=1,
        task_name=None, captured_after=0.1, starved=False, loop_kind="asyncio", test=None,
        phase=None, start_ns=0, end_ns=400_000_000, stack=stack,
        site=site if site is not None else site_of(stack),
    )  # fmt: skip
    return dataclasses.replace(ev, **fields)


def kind(ev):
    found = classify(facts_of(ev))
    return None if found is None else (found[0].kind, found[1])


WAITING = dict(gil="released")
COMPUTING = dict(gil="loop", running=True)

# (case, event, (kind, what)): one kind or more per rule of the table.
CASES = [
    ("time.sleep", event(syscall="clock_nanosleep", **WAITING), ("sleep", "time.sleep")),
    (
        "time.sleep by its line (no system call known)",
        event(source="time.sleep(0.3)  # nap", gil="unknown"),
        ("sleep", "time.sleep"),
    ),
    (
        "requests",
        event(
            lib("requests/api.py", 73, "get"),
            lib("requests/sessions.py", 589, "Session.request"),
            lib("urllib3/connectionpool.py", 537, "HTTPConnectionPool._make_request"),
            std("socket.py", 706, "SocketIO.readinto"),
            syscall="recvfrom",
            **WAITING,
        ),
        ("http", "requests.get"),
    ),
    (
        "urllib",
        event(
            std("urllib/request.py", 216, "urlopen"),
            std("http/client.py", 286, "HTTPResponse._read_status"),
            std("socket.py", 706, "SocketIO.readinto"),
            syscall="poll",
            **WAITING,
        ),
        ("http", "urllib.request.urlopen"),
    ),
    (
        "DNS",
        event(
            std("socket.py", 827, "create_connection"),
            std("socket.py", 962, "getaddrinfo"),
            syscall="recvfrom",
            **WAITING,
        ),
        ("dns", "socket.getaddrinfo"),
    ),
    ("socket.recv", event(syscall="recvfrom", **WAITING), ("socket", "a blocking socket")),
    (
        "socket.create_connection",
        event(std("socket.py", 836, "create_connection"), syscall="connect", **WAITING),
        ("socket", "socket.create_connection"),
    ),
    (
        "sqlite3 by its native frames",
        event(
            native_stack=[
                NativeFrame("sqlite3VdbeExec", "libsqlite3.so.0", 0x100),
                NativeFrame("pysqlite_cursor_execute", "_sqlite3.cpython-312.so", 0x40),
            ],
            running=True,
            **WAITING,
        ),
        ("sqlite3", "sqlite3"),
    ),
    (
        "sqlite3 by its line",
        event(source="sqlite3.connect(path).execute(q)", running=True, **WAITING),
        ("sqlite3", "sqlite3.connect"),
    ),
    (
        "psycopg2",
        event(
            native_stack=[NativeFrame("PQgetResult", "libpq.so.5", 0x10)],
            syscall="poll",
            **WAITING,
        ),
        ("postgres", "psycopg2"),
    ),
    (
        "pymysql",
        event(
            lib("pymysql/cursors.py", 153, "Cursor.execute"),
            std("socket.py", 706, "SocketIO.readinto"),
            syscall="recvfrom",
            **WAITING,
        ),
        ("mysql", "pymysql.Cursor.execute"),
    ),
    (
        "redis",
        event(lib("redis/client.py", 600, "Redis.execute_command"), syscall="recvfrom", **WAITING),
        ("redis", "redis.Redis.execute_command"),
    ),
    (
        "pymongo",
        event(lib("pymongo/collection.py", 900, "Collection.find_one"), **WAITING),
        ("mongodb", "pymongo.Collection.find_one"),
    ),
    (
        "SQLAlchemy's synchronous engine",
        event(
            lib("sqlalchemy/engine/base.py", 1412, "Connection.execute"),
            lib("sqlalchemy/engine/default.py", 922, "DefaultDialect.do_execute"),
            syscall="poll",
            **WAITING,
        ),
        ("sqlalchemy", "sqlalchemy.Connection.execute"),
    ),
    (
        "subprocess.run",
        event(
            std("subprocess.py", 550, "run"),
            std("subprocess.py", 2004, "Popen._try_wait"),
            syscall="wait4",
            **WAITING,
        ),
        ("subprocess", "subprocess.run"),
    ),
    (
        "os.system",
        event(source="os.system('make')", syscall="wait4", **WAITING),
        ("subprocess", "waiting for a child process"),
    ),
    (
        "a Future's result",
        event(
            std("concurrent/futures/_base.py", 451, "Future.result"),
            std("threading.py", 327, "Condition.wait"),
            syscall="futex",
            **WAITING,
        ),
        ("future", "concurrent.futures.Future.result"),
    ),
    (
        "multiprocessing",
        event(std("multiprocessing/pool.py", 367, "Pool.map"), syscall="futex", **WAITING),
        ("process-pool", "multiprocessing.Pool.map"),
    ),
    (
        "queue.Queue.get",
        event(
            std("queue.py", 171, "Queue.get"),
            std("threading.py", 327, "Condition.wait"),
            syscall="futex",
            **WAITING,
        ),
        ("queue", "queue.Queue.get"),
    ),
    (
        "logging",
        event(std("logging/__init__.py", 1160, "StreamHandler.flush"), syscall="write", **WAITING),
        ("logging", "logging.StreamHandler.flush"),
    ),
    (
        "threading.Event.wait",
        event(
            std("threading.py", 629, "Event.wait"),
            std("threading.py", 331, "Condition.wait"),
            syscall="futex",
            **WAITING,
        ),
        ("lock", "threading.Event.wait"),
    ),
    ("lock.acquire()", event(syscall="futex", **WAITING), ("lock", "a thread's lock (futex)")),
    (
        "pathlib",
        event(std("pathlib.py", 1058, "Path.read_text"), syscall="read", **WAITING),
        ("file", "pathlib.Path.read_text"),
    ),
    (
        "shutil",
        event(std("shutil.py", 256, "copyfile"), syscall="sendfile", **WAITING),
        ("file", "shutil.copyfile"),
    ),
    (
        "os.walk",
        event(std("os.py", 366, "walk"), syscall="getdents64", **WAITING),
        ("file", "os.walk"),
    ),
    (
        "os.walk, frozen (Python 3.11+)",
        event(Frame("<frozen os>", 366, "walk"), syscall="getdents64", **WAITING),
        ("file", "os.walk"),
    ),
    (
        "open() on a FIFO",
        event(syscall="openat", **WAITING),
        ("file", "blocking file I/O"),
    ),
    (
        "json.dumps",
        event(
            std("json/__init__.py", 231, "dumps"),
            std("json/encoder.py", 258, "JSONEncoder.iterencode"),
            **COMPUTING,
        ),
        ("json", "json.dumps"),
    ),
    (
        "json's C encoder by its native frames",
        event(
            native_stack=[NativeFrame("encoder_listencode_obj", "_json.cpython-312.so", 0x99)],
            **COMPUTING,
        ),
        ("json", "json"),
    ),
    (
        "json.load waiting for its file",
        event(std("json/__init__.py", 293, "load"), syscall="read", **WAITING),
        ("file", "blocking file I/O"),
    ),
    (
        "pickle.dumps",
        event(source="blob = pickle.dumps(state)", **COMPUTING),
        ("pickle", "pickle.dumps"),
    ),
    (
        "re.match",
        event(std("re/__init__.py", 166, "match"), **COMPUTING),
        ("regex", "re.match"),
    ),
    (
        "a compiled pattern by its native frames",
        event(
            native_stack=[NativeFrame("sre_ucs1_search", "libpython3.12.so.1.0", 0x10)],
            **COMPUTING,
        ),
        ("regex", "the regular expression"),
    ),
    (
        "zlib.compress",
        event(source="packed = zlib.compress(data, 9)", running=True, **WAITING),
        ("compression", "zlib.compress"),
    ),
    (
        "gzip",
        event(std("gzip.py", 289, "GzipFile.write"), running=True, **WAITING),
        ("compression", "gzip.GzipFile.write"),
    ),
    # 400 ms, 350 of them the collector's: under the threshold without it.
    ("garbage collection", event(cause="gc", gc_time=0.35, **COMPUTING), ("gc", "")),
    # 250 ms left without the collector: the code's own computing.
    (
        "the code's work beside a collection",
        event(cause="gc", gc_time=0.15, **COMPUTING),
        ("cpu", ""),
    ),
    (
        "an explicit gc.collect()",
        event(source="gc.collect()", cause="gc", **COMPUTING),
        ("gc", ""),
    ),
    ("a first import", event(cause="import", **COMPUTING), ("import", "")),
    (
        "another thread holding the GIL",
        event(starved=True, gil="other", syscall="futex"),
        ("starvation", ""),
    ),
    ("CPU-bound Python", event(**COMPUTING), ("cpu", "")),
    (
        "the interpreter's own C code (sorted)",
        event(native_stack=[NativeFrame("list_sort", "libpython3.12.so.1.0", 0x10)], **COMPUTING),
        ("cpu", ""),
    ),
    (
        "an extension holding the GIL",
        event(
            native_stack=[
                NativeFrame(None, "_multiarray_umath.cpython-312.so", 0x77),
                NativeFrame("npy_quicksort", "_multiarray_umath.cpython-312.so", 0x10),
            ],
            **COMPUTING,
        ),
        ("c-holding-gil", "npy_quicksort"),
    ),
    (
        "C waiting in the kernel with the GIL held",
        event(syscall="recvfrom", gil="loop"),
        ("c-holding-gil", "C code waiting in recvfrom"),
    ),
    (
        "Python allocating (an unnamed system call: memory management)",
        event(syscall="system call 11", gil="loop"),
        ("cpu", ""),
    ),
    (
        "C code that releases the GIL",
        event(running=True, **WAITING),
        ("c-releasing-gil", ""),
    ),
]


@pytest.mark.parametrize(("ev", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_each_kind_of_block_gets_its_rule(ev, expected):
    assert kind(ev) == expected


def test_every_rule_of_the_table_has_a_case_here():
    assert {r.kind for r in RULES} == {expected[0] for _, _, expected in CASES}


def test_every_fix_names_what_it_recognised():
    # A rule whose fix says "instead of {what}" has something to name: a default, the frame's
    # module and function, or its own test.
    for rule in RULES:
        if "{what}" in rule.fix:
            assert rule.what or rule.modules or rule.test, rule.kind
        if rule.trio is not None:
            assert ("{what}" in rule.trio) == ("{what}" in rule.fix), rule.kind


def test_the_fix_text_fills_in_what_was_recognised():
    ev = event(
        std("subprocess.py", 550, "run"), std("subprocess.py", 2004, "Popen._try_wait"), **WAITING
    )
    assert fix_for(ev) == "await asyncio.create_subprocess_exec(...) instead of subprocess.run"
    assert fix_for(event(syscall="clock_nanosleep", **WAITING)) == (
        "await asyncio.sleep(...) instead of time.sleep"
    )


def test_a_trio_run_gets_trios_names():
    ev = event(syscall="clock_nanosleep", loop_kind="trio", **WAITING)
    assert fix_for(ev) == "await trio.sleep(...) instead of time.sleep"
    ev = event(running=True, loop_kind="trio", **WAITING)
    assert "trio.to_thread.run_sync" in fix_for(ev)
    # A rule without a trio text keeps its own.
    ev = event(lib("requests/api.py", 73, "get"), loop_kind="trio", **WAITING)
    assert (
        fix_for(ev) == "an async HTTP client (httpx.AsyncClient, aiohttp) instead of requests.get"
    )


def test_a_block_with_nothing_sampled_has_no_fix():
    ev = event(site=None, outer=())
    assert ev.stack == [] and fix_for(ev) is None
    # Nor one whose state says nothing: no frame below the site, no system call, GIL unknown.
    assert fix_for(event(gil="unknown")) is None


def test_only_the_frames_the_call_site_called_count():
    # The loop runs in a thread: threading's frames are not what blocked.
    thread = [
        std("threading.py", 1045, "Thread._bootstrap_inner"),
        std("threading.py", 982, "Thread.run"),
    ]
    # With no project frame and no callback dispatched (the loop's own work), none counts.
    own = [*thread, *DISPATCH[:2], std("asyncio/base_events.py", 1900, "BaseEventLoop._run_once")]
    ev = event(site=None, outer=own, **COMPUTING)
    assert facts_of(ev).below == ()
    assert kind(ev) == ("cpu", "")
    # With a project frame: the frames above it do not count.
    assert kind(event(outer=(*thread, *DISPATCH), **COMPUTING)) == ("cpu", "")


def test_the_source_line_counts_only_when_nothing_ran_below_it():
    # time.sleep is named on the line, but the line called a library that computes.
    ev = event(
        std("json/__init__.py", 231, "dumps"), source="time.sleep(json.dumps(x))", **COMPUTING
    )
    assert kind(ev) == ("json", "json.dumps")
    # And asyncio.sleep (or anyio's, trio's) on the line is not time.sleep.
    assert kind(event(source="await asyncio.sleep(1)", gil="unknown")) is None


def test_without_a_project_frame_the_frames_the_loop_called_count():
    # loop.call_soon(time.sleep, 0.3): a C function the loop called, nothing below dispatch.
    ev = event(site=None, outer=(PYTEST, *DISPATCH), syscall="clock_nanosleep", **WAITING)
    assert ev.site == DISPATCH[-1]
    assert facts_of(ev).below == ()
    assert kind(ev) == ("sleep", "time.sleep")
    # loop.call_soon(subprocess.run, ...): subprocess's frames below the dispatch.
    run = std("subprocess.py", 550, "run")
    ev = event(run, site=None, outer=(PYTEST, *DISPATCH), syscall="wait4", **WAITING)
    assert facts_of(ev).below == (run,)
    assert kind(ev) == ("subprocess", "subprocess.run")


def test_a_detectors_wrapper_is_looked_through():
    # blockbuster's wrapper around time.sleep: nothing else ran below the site.
    ev = event(WRAPPER, source="time.sleep(0.3)", gil="unknown")
    assert facts_of(ev).below == ()
    assert kind(ev) == ("sleep", "time.sleep")
    # Around a lock's acquire under threading's Event.wait.
    wait = std("threading.py", 629, "Event.wait")
    ev = event(wait, WRAPPER, syscall="futex", **WAITING)
    assert facts_of(ev).below == (wait,)
    assert kind(ev) == ("lock", "threading.Event.wait")


def test_sqlalchemys_asyncio_bridge_is_not_its_synchronous_engine():
    bridge = lib("sqlalchemy/util/_concurrency_py3k.py", 190, "greenlet_spawn")
    execute = lib("sqlalchemy/engine/base.py", 1412, "Connection.execute")
    ev = event(execute, outer=(RUNNER, bridge), running=True, **WAITING)
    assert kind(ev) == ("c-releasing-gil", "")
    # Hydrating rows with the GIL held is CPU-bound work, whichever engine.
    assert kind(event(execute, **COMPUTING)) == ("cpu", "")


def test_a_rule_is_easy_to_add():
    # A rule of one's own, first in the table: matched by a module of the frames below the site.
    mine = Rule("grpc", "grpc.aio instead of {what}", modules=("grpc",))
    ev = event(lib("grpc/_channel.py", 1000, "_UnaryUnaryMultiCallable.__call__"), **WAITING)
    rule, what = classify(facts_of(ev), (mine, *RULES))
    assert rule.text(what) == "grpc.aio instead of grpc._UnaryUnaryMultiCallable.__call__"
    assert classify(Facts(below=()), (mine,)) is None


def test_the_failure_report_prints_the_fix_under_the_call_site():
    ev = event(
        std("subprocess.py", 550, "run"), std("subprocess.py", 2004, "Popen._try_wait"), **WAITING
    )
    ev.innermost = ev.stack[-1]
    ev.fix = fix_for(ev)
    lines = format_event(ev)
    assert lines[2:6] == [
        "    /proj/app/handlers.py:30 in handle",
        "  >     do_it()",
        "    blocked in subprocess.py:2004 in Popen._try_wait, called from "
        "/proj/app/handlers.py:30 in handle",
        "    fix: await asyncio.create_subprocess_exec(...) instead of subprocess.run",
    ]


# --- paths as reports show them ----------------------------------------------------------------


def test_library_files_are_named_as_imports_name_them():
    assert library_path(os.path.join(STDLIB, "asyncio", "events.py")) == "asyncio/events.py"
    assert library_path(os.path.join(STDLIB, "traceback.py")) == "traceback.py"
    assert library_path(f"{SITE_PACKAGES}/requests/sessions.py") == "requests/sessions.py"
    assert library_path("/usr/lib/python3/dist-packages/yaml/reader.py") == "yaml/reader.py"
    assert library_path("/proj/app/handlers.py") is None
    assert library_path("<frozen importlib._bootstrap>") is None
    import loopguard._runtime

    assert library_path(loopguard._runtime.__file__) == "loopguard/_runtime.py"


def test_a_frame_shows_a_library_path_and_a_project_path_as_it_is():
    assert str(std("asyncio/events.py", 80, "Handle._run")) == "asyncio/events.py:80 in Handle._run"
    assert str(SITE) == "/proj/app/handlers.py:30 in handle"  # outside the current directory
    here = os.path.join(os.getcwd(), "app", "x.py")
    assert shown_path(here) == os.path.join("app", "x.py")
    assert shown_path("<string>") == "<string>"


def test_wrappers_are_known_by_file_and_function():
    assert is_wrapper(WRAPPER.filename, WRAPPER.function)
    assert is_wrapper(WRAPPER.filename, "wrapper")  # Python 3.10: no qualified names
    assert not is_wrapper(WRAPPER.filename, "BlockBuster.activate")
    assert not is_wrapper("/proj/blockbuster/blockbuster.py", "wrapper")  # the project's own


def test_the_site_and_the_operation_look_through_a_wrapper():
    assert site_of([*DISPATCH, WRAPPER]) == DISPATCH[-1]
    assert site_of([RUNNER, WRAPPER]) == RUNNER


def test_stacks_fold_a_wrapper_wherever_it_is():
    wait = std("threading.py", 629, "Event.wait")
    cond = std("threading.py", 331, "Condition.wait")
    assert fold_stack([RUNNER, SITE, wait, cond, WRAPPER]) == [
        RUNNER,
        SITE,
        wait,
        cond,
        Fold(1, ("blockbuster",)),
    ]
    assert str(Fold(1, ("blockbuster",))) == "1 frame in blockbuster"
    # Beside a fold, into it.
    a, b, c = (lib(f"outer/m{i}.py", i, "f") for i in range(3))
    assert fold_stack([RUNNER, a, b, WRAPPER, SITE]) == [
        RUNNER,
        Fold(3, ("outer", "blockbuster")),
        SITE,
    ]
    # A stack without project frames is not folded, but for its wrappers.
    assert fold_stack([*DISPATCH, WRAPPER]) == [*DISPATCH, Fold(1, ("blockbuster",))]
    assert c not in fold_stack([RUNNER, a, b, WRAPPER, SITE])


def test_the_guide_lists_every_kind_in_the_tables_order():
    guide = (Path(__file__).resolve().parents[2] / "docs" / "guide.md").read_text()
    section = guide.split("## What to do instead", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|")[1].strip() for line in section.splitlines() if line.startswith("| ")]
    listed = [k for row in rows[1:] for k in row.split(", ")]  # rows[0]: the header
    in_order = list(dict.fromkeys(r.kind for r in RULES))
    assert listed == in_order
