"""The GIL-free frame reader (``src/reader``), tested through ``loopguard._native._reader_*``.

Stress duration: ``LOOPGUARD_STRESS_SECONDS`` (default 3 per run; use 30 for a soak run).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import glob
import importlib.machinery
import importlib.util
import json
import marshal
import os
import re
import subprocess
import sys
import sysconfig
import textwrap
import threading
import time
import types
import warnings

import pytest


def _load_native():
    """``loopguard._native``; loaded directly if the package's ``__init__`` cannot import."""
    try:
        from loopguard import _native

        return _native
    except ImportError:
        spec = importlib.util.find_spec("loopguard")
        if spec is None or not spec.submodule_search_locations:
            raise
        for where in spec.submodule_search_locations:
            for path in glob.glob(os.path.join(where, "_native*.so")):
                loader = importlib.machinery.ExtensionFileLoader("loopguard._native", path)
                mod_spec = importlib.util.spec_from_file_location(
                    "loopguard._native", path, loader=loader
                )
                module = importlib.util.module_from_spec(mod_spec)
                loader.exec_module(module)
                return module
        raise


native = _load_native()

PY311 = sys.version_info >= (3, 11)
STRESS_SECONDS = float(os.environ.get("LOOPGUARD_STRESS_SECONDS", "3"))

pytestmark = [
    pytest.mark.interpreter,
    pytest.mark.skipif(
        native.reader_unavailable() is not None,
        reason=f"native reader unavailable: {native.reader_unavailable()}",
    ),
]


def qualname(code) -> str:
    return code.co_qualname if PY311 else code.co_name


# --------------------------------------------------------------------------------------------
# Line tables


def iter_codes(code):
    yield code
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from iter_codes(const)


def stdlib_codes():
    """Every code object of every ``.py`` file of the stdlib (site-packages aside): loaded from
    its bytecode cache where there is one (much faster than compiling, and modules alike then
    reuse each other's freed addresses), else compiled."""
    stdlib = sysconfig.get_paths()["stdlib"]
    for path in sorted(glob.glob(os.path.join(stdlib, "**", "*.py"), recursive=True)):
        if "site-packages" in path:
            continue
        try:
            with open(importlib.util.cache_from_source(path), "rb") as f:
                cached = f.read()
            if cached[:4] == importlib.util.MAGIC_NUMBER:
                yield from iter_codes(marshal.loads(memoryview(cached)[16:]))
                continue
        except (OSError, ValueError, EOFError):
            pass
        try:
            with open(path, "rb") as f:
                source = f.read()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                top = compile(source, path, "exec", dont_inherit=True)
        except (SyntaxError, ValueError, UnicodeDecodeError, OSError):
            continue
        yield from iter_codes(top)


def merged(ranges):
    """``co_lines()``-style ranges with contiguous equal-line neighbours merged (3.12+ merges)."""
    out = []
    for start, end, line in ranges:
        if out and out[-1][2] == line and out[-1][1] == start:
            out[-1] = (out[-1][0], end, line)
        else:
            out.append((start, end, line))
    return out


def check_code(code):
    """Compares the reader's view of ``code`` with CPython's; returns a problem or None."""
    filename, name, first, nbytes = native._reader_code(code)
    if (filename, name, first, nbytes) != (
        code.co_filename,
        qualname(code),
        code.co_firstlineno,
        len(code.co_code),
    ):
        return f"code fields: {(filename, name, first, nbytes)}"
    got = native._reader_lines(code)
    want = list(code.co_lines())
    if sys.version_info < (3, 12) and got != want:
        return f"co_lines {got} != {want}"
    if merged(got) != merged(want):
        return f"co_lines {merged(got)} != {merged(want)}"
    probes = [(probe, line) for start, end, line in want for probe in {start, end - 2}]
    # One read of the code object for all of them (each read takes a few system calls).
    lines = native._reader_lines_for(code, [probe for probe, _ in probes])
    for (probe, line), got_line in zip(probes, lines, strict=True):
        if got_line != line:
            return f"line_for({probe}) = {got_line} != {line}"
    if native._reader_line_for(code, -2) != code.co_firstlineno:
        return "line of a frame that has not started"
    return None


@pytest.mark.slow
def test_line_tables_match_cpython_for_the_whole_stdlib():
    checked = 0
    failures = []
    for code in stdlib_codes():
        checked += 1
        problem = check_code(code)
        if problem is not None:
            failures.append(f"{code.co_filename}:{code.co_firstlineno} {code.co_name}: {problem}")
    assert checked > 10_000, checked
    assert not failures, f"{len(failures)} of {checked} differ:\n" + "\n".join(failures[:20])


def test_non_ascii_names_are_read():
    src = textwrap.dedent(
        """
        def café():                  # UCS1
            pass
        def Ωmega():                 # UCS2
            pass
        def \U00010330x():           # UCS4 (GOTHIC LETTER AHSA)
            pass
        """
    )
    ns = {}
    exec(compile(src, "/tmp/ünï/ṁodule-😀.py", "exec"), ns)
    for fn in ns.values():
        if isinstance(fn, types.FunctionType):
            filename, name, _, _ = native._reader_code(fn.__code__)
            assert filename == "/tmp/ünï/ṁodule-😀.py"
            assert name == fn.__code__.co_name


def test_reader_rejects_non_code_objects():
    with pytest.raises(RuntimeError, match="not a code object"):
        native._reader_code(object())


# --------------------------------------------------------------------------------------------
# Stacks


def current_frames_stack(ident):
    """The stack of thread ``ident`` per ``sys._current_frames()``, outermost first."""
    frame = sys._current_frames()[ident]
    out = []
    while frame is not None:
        out.append((frame.f_code.co_filename, frame.f_lineno, qualname(frame.f_code)))
        frame = frame.f_back
    return out[::-1]


class Target(threading.Thread):
    """A thread that publishes its thread state, then runs ``body``."""

    def __init__(self, body):
        super().__init__(daemon=True)
        self.body = body
        self.tstate = None
        self.ready = threading.Event()

    def run(self):
        self.tstate = native._reader_current_tstate()
        self.ready.set()
        self.body()


@contextlib.contextmanager
def running(body):
    """Run ``body(stop)`` in a Target thread until the block ends; yield the thread."""
    stop = threading.Event()
    t = Target(lambda: body(stop))
    t.start()
    t.ready.wait()
    try:
        yield t
    finally:
        stop.set()
        t.join()


def sleeper_leaf(event):
    while not event.is_set():
        time.sleep(0.005)


def sleeper_middle(event):
    return sleeper_leaf(event)


def sleeper_gen(event):
    yield sleeper_middle(event)


class Sleeper:
    def method(self, event):
        return next(sleeper_gen(event))


async def sleeper_coro(event):
    Sleeper().method(event)


def test_stack_of_a_sleeping_thread_matches_current_frames():
    with running(lambda stop: asyncio.run(sleeper_coro(stop))) as t:
        deadline = time.monotonic() + 10
        while current_frames_stack(t.ident)[-1][2] != "sleeper_leaf":
            assert time.monotonic() < deadline
            time.sleep(0.001)
        while True:
            # The thread sleeps with the GIL released; between our two reads it may run a few
            # bytecodes (the `while` line), so retry until both views agree.
            want = current_frames_stack(t.ident)
            got = [tuple(f) for f in native._reader_stack(t.tstate, t.ident)]
            if got == want or time.monotonic() > deadline:
                break
        assert got == want
        names = [f[2] for f in got]
        for expected in ("sleeper_coro", "sleeper_gen", "sleeper_middle", "sleeper_leaf"):
            assert any(n.endswith(expected) for n in names), names
        assert got[-1][0] == __file__


def test_wrong_thread_ident_is_refused():
    with running(sleeper_leaf) as t:
        with pytest.raises(RuntimeError, match="no longer belongs"):
            native._reader_stack(t.tstate, threading.get_ident())


def read_deep(depth):
    """The reader's stack of a thread blocked at the bottom of a recursion ``depth`` deep, and
    that thread's own count of its frames there."""
    stop = threading.Event()
    counted = []

    def recurse(n):
        if n == 0:
            f, k = sys._getframe(), 0
            while f is not None:
                f, k = f.f_back, k + 1
            counted.append(k + 1)  # and sleeper_leaf's
            sleeper_leaf(stop)
        else:
            recurse(n - 1)

    old = sys.getrecursionlimit()
    old_size = threading.stack_size(256 << 20)  # 3.10 recurses in C too
    sys.setrecursionlimit(depth + 1000)
    t = Target(lambda: recurse(depth))
    try:
        t.start()
        t.ready.wait()
        # Read once the thread is at the bottom (a loaded machine can take seconds to get it
        # there); a read that meets the stack still moving says so, and is tried again.
        frames: list = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if counted:
                try:
                    frames = native._reader_stack(t.tstate, t.ident)
                except RuntimeError as e:
                    if "changed while it was read" not in str(e):
                        raise
                else:
                    if frames[-1][2].endswith("sleeper_leaf"):
                        break
            time.sleep(0.01)
        else:
            pytest.fail(f"the thread never blocked at the bottom of {depth} frames")
        return frames, counted[0]
    finally:
        stop.set()
        t.join()
        threading.stack_size(old_size)
        sys.setrecursionlimit(old)


def test_a_stack_deeper_than_the_old_limit_is_read_whole():
    frames, depth = read_deep(1500)
    assert len(frames) == depth
    assert all(f[0] != "<loopguard>" for f in frames)
    assert frames[-1][2].endswith("sleeper_leaf")
    assert frames[0][2].endswith("_bootstrap")


def test_a_stack_deeper_than_the_caps_is_read_at_both_ends_and_counted():
    frames, depth = read_deep(15_000)
    # The innermost 10,000 frames, one marker, the outermost 100.
    assert len(frames) == 10_000 + 1 + 100
    marker = frames[100]
    assert marker[0] == "<loopguard>"
    not_read = depth - 10_100
    assert marker[2].startswith(f"<{not_read} frames not read: "), marker
    assert frames[0][2].endswith("_bootstrap")
    assert frames[-1][2].endswith("sleeper_leaf")
    # Every frame kept but the few outside the recursion (15,001 frames of recurse).
    assert sum(f[2].endswith("recurse") for f in frames) == 10_100 - (depth - 15_001)


def innermost_hits(result, function_suffix):
    return sum(
        count for (_, _, fn), count in result["innermost"].items() if fn.endswith(function_suffix)
    )


def spin(stop):
    n = 0
    while not stop.is_set():
        n += 1
    return n


def test_pure_python_loop_is_read_without_the_gil():
    with running(spin) as t:
        result = native._reader_stress(t.tstate, t.ident, 0.5)
    assert result["ok"] > 100, result["errors"]
    assert innermost_hits(result, "spin") > 100, result["innermost"]
    lines = {line for (f, line, fn), _ in result["innermost"].items() if fn.endswith("spin")}
    first = spin.__code__.co_firstlineno
    assert lines <= {first + 2, first + 3}, lines


def regex_worker():
    # Catastrophic backtracking: seconds inside one C call that holds the GIL throughout.
    return re.match(r"(a+)+$", "a" * 24 + "b")


def sort_worker(data):
    return sorted(data)


@pytest.mark.parametrize("kind", ["regex", "sorted"])
def test_c_call_holding_the_gil_is_read_while_it_runs(kind):
    if kind == "regex":
        body, inner = regex_worker, "match"
    else:
        import random

        data = [random.random() for _ in range(3_000_000)]
        body, inner = (lambda: sort_worker(data)), "sort_worker"
    go = threading.Event()
    started = []

    def run():
        go.wait()
        started.append(time.monotonic())
        body()
        started.append(time.monotonic())

    t = Target(run)
    t.start()
    t.ready.wait()
    go.set()
    # The sampler runs in Rust with the GIL released for the whole time the worker holds it.
    result = native._reader_stress(t.tstate, t.ident, 0.6, 1000)
    t.join()
    busy = started[1] - started[0]
    assert busy > 0.3, f"the {kind} call was too quick ({busy:.2f}s) to test anything"
    hits = innermost_hits(result, inner)
    assert hits > 50, (result["innermost"], result["errors"])


def nested_chunks(n):
    for i in range(n):
        yield from inner_chunks(i)


def inner_chunks(i):
    yield str(i)
    yield ","


def join_generators(stop):
    # C code (str.join) resuming generators millions of times a second, as json.dumps(indent=)
    # does: each resume enters a new C-level frame of the interpreter, at the same C stack depth.
    while not stop.is_set():
        "".join(nested_chunks(50_000))


def test_a_thread_resuming_generators_from_c_is_read_whole():
    """A sample is not cut at a generator: its stack reaches the thread's own function, or (the
    thread paused between resuming a generator and linking it, at every read) says it is cut."""
    with running(join_generators) as t:
        result = native._reader_stress(t.tstate, t.ident, 0.5)
    assert result["ok"] > 100, result["errors"]
    in_generators = innermost_hits(result, "_chunks")
    assert in_generators > 50, result["innermost"]
    # Thread bootstrap, run, join_generators, then the generators: a whole stack has at least
    # three frames; one cut at the generator has one or two, and the marker when it says so.
    unmarked = {d: n for d, n in result["depths"].items() if d < 3}
    assert not unmarked, (result["depths"], result["cut"])
    # Marked ones are the exception (without the reader's second look, 3 % to 6.5 % of reads
    # were cut; how many stay cut after it depends on how busy the machine is).
    assert result["cut"] <= 0.25 * result["ok"], (result["cut"], result["ok"])


def test_reading_the_calling_thread_works():
    frames = native._reader_stack(native._reader_current_tstate(), threading.get_ident())
    assert frames[-1][2].endswith("test_reading_the_calling_thread_works")


def test_per_sample_cost_of_a_deep_blocked_stack():
    stop = threading.Event()

    def recurse(n):
        if n == 0:
            sleeper_leaf(stop)
        else:
            recurse(n - 1)

    t = Target(lambda: recurse(100))
    t.start()
    t.ready.wait()
    time.sleep(0.05)
    try:
        result = native._reader_stress(t.tstate, t.ident, 0.3)
    finally:
        stop.set()
        t.join()
    assert result["ok"] > 0
    print(
        f"\n{sys.version.split()[0]}: ~105-frame stack: p50 {result['p50_ns'] / 1000:.0f} us, "
        f"p99 {result['p99_ns'] / 1000:.0f} us, samples {result['samples']}"
    )
    assert result["p50_ns"] < 1_000_000


# --------------------------------------------------------------------------------------------
# The watchdog's sampler: stack plus GIL attribution


def test_sample_of_a_thread_in_a_gil_releasing_call():
    with running(sleeper_leaf) as t:
        sample = json.loads(native._reader_sample(t.tstate, t.ident, 0.05))
    assert sample["error"] is None and sample["late"] is False
    assert sample["frames"][-1]["function"].endswith("sleeper_leaf")
    assert sample["gil"] in ("released", "unknown")


def test_sample_of_a_thread_running_python_code():
    with running(spin) as t:
        sample = json.loads(native._reader_sample(t.tstate, t.ident, 0.05))
    assert sample["error"] is None, sample
    assert any(f["function"].endswith("spin") for f in sample["frames"][-2:]), sample
    assert sample["gil"] in ("loop", "unknown")


def test_sample_of_a_starved_thread_names_the_gil_holder():
    stop = threading.Event()
    go = threading.Event()
    victim = Target(lambda: sleeper_leaf(stop))
    victim.start()
    victim.ready.wait()

    def hog_body():
        go.wait()
        regex_worker()

    hog = Target(hog_body)
    hog.start()
    hog.ready.wait()
    go.set()
    try:
        # While we sleep without the GIL the hog takes it for seconds; the victim wakes from its
        # 5 ms sleep and waits for the GIL.
        sample = json.loads(native._reader_sample(victim.tstate, victim.ident, 0.3))
    finally:
        stop.set()
        hog.join()
        victim.join()
    assert sample["frames"][-1]["function"].endswith("sleeper_leaf"), sample
    if sample["gil"] == "unknown":
        pytest.skip("the GIL reader is not available here")
    assert sample["gil"] == "other", sample
    assert sample["holder"]["thread_ident"] == hog.ident
    holder_functions = [f["function"] for f in sample["holder"]["frames"]]
    assert any(f.endswith("regex_worker") for f in holder_functions), holder_functions


# --------------------------------------------------------------------------------------------
# Stress: a thread that churns its frames, sampled in a tight loop without the GIL

STRESS_SCRIPT = r"""
import asyncio, gc, json, sys, threading, time, types, dis, os
sys.path.insert(0, sys.argv[1])
from test_reader import native, qualname, iter_codes

stop = threading.Event()

def rec(n):
    if n:
        return rec(n - 1) + 1
    return 0

def gen(n):
    for i in range(n):
        yield rec(i % 30)

def boom(n):
    if n:
        return boom(n - 1)
    raise ValueError(n)

async def coro(n):
    await asyncio.sleep(0)
    return sum(gen(n))

async def many():
    await asyncio.gather(*(coro(20) for _ in range(10)))

class Holder:
    def __del__(self):
        rec(10)

def churn():
    i = 0
    while not stop.is_set():
        i += 1
        rec(200)
        sum(gen(50))
        try:
            boom(50)
        except ValueError:
            pass
        if i % 20 == 0:
            asyncio.run(many())
        if i % 50 == 0:
            x = [Holder() for _ in range(10)]
            x.append(x)
            del x
            gc.collect()
        [rec(5) for _ in range(5)]

box = {}
def body():
    box["tstate"] = native._reader_current_tstate()
    churn()

t = threading.Thread(target=body)
t.start()
while "tstate" not in box:
    time.sleep(0.001)
result = native._reader_stress(box["tstate"], t.ident, float(sys.argv[2]))
stop.set()
t.join()

# Every code object that can have run, with its lines.
known = {}
def add(code):
    lines = {code.co_firstlineno}
    if sys.version_info >= (3, 10):
        # 0: an instruction without a line (CPython's f_lineno is None there too).
        lines |= {0 if l is None else l for _, _, l in code.co_lines()}
    else:
        lines |= {l for _, l in dis.findlinestarts(code)}
    known.setdefault((code.co_filename, qualname(code)), set()).update(lines)
def attr(obj, name):
    try:
        return getattr(obj, name, None)
    except Exception:  # a __getattr__ that does more than look up (ctypes' library loaders)
        return None
for obj in gc.get_objects():
    code = attr(obj, "__code__") or attr(obj, "gi_code") or attr(obj, "cr_code")
    if isinstance(code, types.CodeType):
        for c in iter_codes(code):
            add(c)
bad = [f for f in result["frames"]
       if f[1] not in known.get((f[0], f[2]), ()) and f[0] != "<loopguard>"]
result["bad"] = bad
result["frames"] = len(result["frames"])
result["depths"] = {str(k): v for k, v in result["depths"].items()}
del result["innermost"]
print(json.dumps(result))
"""


def test_stress_sampling_a_thread_that_churns_frames(tmp_path):
    script = tmp_path / "stress.py"
    script.write_text(STRESS_SCRIPT)
    proc = subprocess.run(
        [sys.executable, str(script), os.path.dirname(__file__), str(STRESS_SECONDS)],
        capture_output=True,
        text=True,
        timeout=STRESS_SECONDS + 120,
    )
    assert proc.returncode == 0, f"crashed ({proc.returncode}):\n{proc.stderr[-3000:]}"
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(
        f"\n{sys.version.split()[0]}: {result['samples']} samples in {STRESS_SECONDS}s, "
        f"{result['ok']} ok, errors {result['errors']}, p50 {result['p50_ns']} ns, "
        f"p99 {result['p99_ns']} ns, max {result['max_ns']} ns"
    )
    assert result["ok"] > 0.2 * result["samples"], result
    assert result["frames"] > 10
    assert not result["bad"], result["bad"][:20]


# --------------------------------------------------------------------------------------------
# process_vm_readv unavailable

VM_READV_SCRIPT = r"""
import sys
sys.path.insert(0, sys.argv[1])
from test_reader import native
why = native.reader_unavailable()
assert why is not None and "process_vm_readv" in why, why
try:
    native.start(100_000_000, "native")
except RuntimeError as e:
    assert "process_vm_readv" in str(e), e
else:
    raise AssertionError("the native sampler started")
assert native.start(100_000_000, "auto") == "gil"
assert native.sampler_name() == "gil"
native.stop()
print("ok")
"""


def test_without_process_vm_readv_native_is_unavailable_and_auto_falls_back(tmp_path):
    script = tmp_path / "vm.py"
    script.write_text(VM_READV_SCRIPT)
    env = dict(os.environ, LOOPGUARD_DISABLE_VM_READV="1")
    proc = subprocess.run(
        [sys.executable, str(script), os.path.dirname(__file__)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_native_sampler_is_chosen_when_available(tmp_path):
    script = tmp_path / "auto.py"
    script.write_text(
        "import sys\nsys.path.insert(0, sys.argv[1])\nfrom test_reader import native\n"
        "print(native.start(100_000_000, 'auto'), native.sampler_name())\nnative.stop()\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "LOOPGUARD_DISABLE_VM_READV"}
    proc = subprocess.run(
        [sys.executable, str(script), os.path.dirname(__file__)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["native", "native"]


def _two_line_tables():
    """Two code objects alike but for their line table (of the same size)."""
    a, b = {}, {}
    exec("def f():\n    x = 1\n    return x\n", a)
    exec("def f():\n    x = 1\n\n    return x\n", b)
    return a["f"].__code__, b["f"].__code__


@pytest.mark.parametrize("field", ["co_filename", "name", "co_linetable"])
def test_a_code_object_at_a_reused_address_is_read_afresh(field):
    # A code object freed with its file name (or name, or line table), then a new one made
    # alike but for that object's contents: both land at the freed addresses (the allocators
    # reuse the last block freed), so the new header holds the very same pointers and numbers.
    # Structurally identical modules loaded one after the other do the same. Each must be read
    # as itself, not as the entry cached for that address.
    base, other = _two_line_tables()
    assert base.co_code == other.co_code
    assert len(base.co_linetable) == len(other.co_linetable) != 0
    assert base.co_linetable != other.co_linetable
    name_field = "co_qualname" if PY311 else "co_name"
    failures = []
    reused = 0
    last = {}
    for i in range(100):
        if field == "co_filename":
            code = base.replace(co_filename=f"/tmp/m{i:03d}.py")
        elif field == "name":
            code = base.replace(**{name_field: f"g{i:03d}"})
        else:
            table = (base, other)[i % 3 == 0].co_linetable
            # A copy made with no other allocation of its size (3.15's bytearray holds a bytes
            # object, which would take the freed table's block).
            copy = bytes(list(table))
            code = base.replace(co_linetable=copy)
            del copy
        # What the reader keeps for this address: the previous code object made there.
        key = (id(code.co_filename), id(getattr(code, name_field)), id(code.co_linetable))
        reused += last.get(id(code)) == key
        last[id(code)] = key
        # Only these reads (co_code, for one, would allocate and so move the next object).
        got = native._reader_code(code)[:2], merged(native._reader_lines(code))
        want = (code.co_filename, getattr(code, name_field)), merged(code.co_lines())
        if got != want:
            failures.append(f"{i}: {got} != {want}")
        del code, got, want
    assert reused > 0, "no code object was made at the addresses of the previous one there"
    assert not failures, f"{len(failures)} of 100 read wrong: {failures[:5]}"


def test_layout_source():
    source, version = native._reader_layout()
    assert version == sys.version_info[:2]
    assert source == ("_Py_DebugOffsets" if sys.version_info >= (3, 13) else "headers")


def test_gc_does_not_disturb_reading():
    # Cached code objects that die and whose memory is reused must not be served stale.
    # The heap from before the test is frozen: each full collection then scans only what the
    # test made (the function, its namespace and code, in a cycle), not the whole session's
    # objects, which made each collection take tens of milliseconds.
    gc.freeze()
    try:
        for i in range(200):
            ns = {}
            source = f"def f{i}():\n" + "    x = 1\n" * (i % 7 + 1)
            exec(compile(source, f"<gen{i}>", "exec"), ns)
            code = ns[f"f{i}"].__code__
            assert native._reader_code(code)[:2] == (f"<gen{i}>", f"f{i}")
            del ns, code
            assert gc.collect() > 0  # the cycle died here, and its memory is free to reuse
    finally:
        gc.unfreeze()
