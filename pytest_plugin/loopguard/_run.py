"""``python -m loopguard run [OPTIONS] -- COMMAND [ARGS...]``: a program watched from start to end.

The program runs in this process, as ``coverage run`` runs one (:mod:`loopguard._target` says
which commands can be run so), with the runtime acquired before its first line: every event
loop it starts (asyncio, uvloop, trio, anyio's, loops in threads) is watched from its first
iteration. A :class:`Session` keeps what is seen:

* live: a reporter thread takes the finished blocks from the watchdog a few times a second,
  judges them (:class:`~loopguard._judge.Judge`, as ``guard()`` does) and prints each block's
  report to stderr, with the request it was serving (:mod:`loopguard._asgi`). Nothing is printed
  from the loop threads, and the loops never wait for the reporter;
* at the end (the program returned, raised, called ``sys.exit``, or was stopped by SIGINT or
  SIGTERM): the hotspot table, the loop lag of every loop (a timer every 10 ms: how late it
  ran, p50/p99/max), and the JSON and HTML reports, written atomically.

The program's output, exit status and signal handling are its own: SIGINT stays Python's
(``KeyboardInterrupt``); a SIGTERM handler is installed only while the program has none (it
writes the reports, then the process dies of SIGTERM as it would have). A program that dies of
a signal still dies of it. ``--fail-on block|lag`` makes the exit status
:data:`FAIL_ON_STATUS` when a block over the threshold, or a loop lag over ``--max-lag``,
happened.

Child processes (multiprocessing's spawn, ``uvicorn --workers N``, any Python subprocess) are
watched too: the environment variable :data:`CHILD_ENV` carries the settings and a directory
put first on ``PYTHONPATH`` holds a ``sitecustomize`` module that starts a child session in
each new interpreter (then runs the ``sitecustomize`` it hides, if any); a child forked
without a new interpreter starts its own session after the fork. Each child writes its own
report into a shared directory; the parent merges them into its own at the end
(:func:`loopguard._merge.merge`).
"""

from __future__ import annotations

import argparse
import atexit
import collections
import dataclasses
import json
import os
import signal
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Optional

from . import _asgi, _native
from ._errors import SettingError
from ._events import BlockEvent
from ._failure import format_event
from ._judge import Judge, Verdict
from ._parse import (
    CPU_WAIT_CHOICES,
    DEFAULT_THRESHOLD,
    DURATION_HELP,
    GC_CHOICES,
    NATIVE_CHOICES,
    SAMPLERS,
    AllowPattern,
    format_duration,
    parse_allow,
    parse_choice,
    parse_duration,
)
from ._report import (
    check_writable,
    new_run,
    report_chunks,
    report_data,
    summary_lines,
    write_atomically,
)
from ._runtime import LAG_PROBE_INTERVAL, runtime

__all__ = ["CHILD_ENV", "FAIL_ON_STATUS", "RunSettings", "Session", "main", "start_child"]

USAGE_ERROR = 2
FAIL_ON_STATUS = 3
"""The exit status when ``--fail-on`` found what it names (whatever the program's own)."""
CHILD_ENV = "LOOPGUARD_RUN_CHILD"
"""The settings a child process starts its session with (JSON), set by the parent."""
FAIL_ON_CHOICES = ("block", "lag")
_SOURCE = "the command line"
_POLL = 0.1
"""Seconds between the reporter's looks at the watchdog."""
_CHILD_WAIT = 10.0
"""At most this long, the parent waits at the end for the reports of children still running."""
_KEEP_FOR_GUARDS = 600.0
"""Seconds a block stays in the runtime's log for a ``guard()`` of the program (one open
longer does not see the blocks that began that much earlier)."""
_LAG_KEPT = 100_000
"""Lag samples kept per loop for the percentiles (about 17 minutes at one every 10 ms)."""


# --- settings --------------------------------------------------------------------------------


@dataclasses.dataclass
class RunSettings:
    threshold: float = DEFAULT_THRESHOLD
    sampler: str = "auto"
    native: str = "off"
    cpu_wait: str = "exclude"
    gc: str = "exclude"
    allow: tuple[str, ...] = ()
    json_path: Optional[Path] = None
    html_path: Optional[Path] = None
    max_lag: Optional[float] = None
    fail_on: tuple[str, ...] = ()
    context_vars: tuple[str, ...] = ()

    def patterns(self) -> tuple[AllowPattern, ...]:
        return tuple(parse_allow(p, source="--allow") for p in self.allow)

    def as_json(self) -> dict[str, Any]:
        """The report's ``"settings"`` (the plugin's keys, and those of this command)."""
        return {
            "threshold_ms": round(self.threshold * 1000.0, 3),
            "record_threshold_ms": None,
            "mode": "fail",
            "gc": self.gc,
            "cpu_wait": self.cpu_wait,
            "native": self.native,
            "sampler": self.sampler,
            "allow": list(self.allow),
            "scan": [],
            "baseline": None,
            "max_lag_ms": None if self.max_lag is None else round(self.max_lag * 1000.0, 3),
            "fail_on": list(self.fail_on),
            "context_vars": list(self.context_vars),
        }

    def for_child(self, directory: str) -> str:
        d = dataclasses.asdict(self)
        d["json_path"] = d["html_path"] = None
        d["directory"] = directory
        return json.dumps(d)

    @classmethod
    def from_child(cls, text: str) -> tuple[RunSettings, str]:
        d = json.loads(text)
        directory = d.pop("directory")
        for key in ("allow", "fail_on", "context_vars"):
            d[key] = tuple(d[key])
        return cls(**d), directory


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:
        self.print_usage(sys.stderr)
        self.exit(USAGE_ERROR, f"loopguard: error: {message}\n")


def parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="python -m loopguard run",
        usage="python -m loopguard run [OPTIONS] -- COMMAND [ARGS...]",
        description="Run a Python program with every event loop it starts watched: each block "
        "is reported on stderr when it ends; at exit, the hotspot table and each loop's lag. "
        "COMMAND is one of: python -m MODULE ..., python SCRIPT.py ..., python -c CODE ..., "
        "-m MODULE ..., SCRIPT.py ..., or a console script of an installed Python package "
        "(uvicorn, hypercorn, gunicorn ...). It runs in this process.",
    )
    p.add_argument(
        "--threshold",
        metavar="DURATION",
        help=f"report blocks longer than this: "
        f"{DURATION_HELP}; default {format_duration(DEFAULT_THRESHOLD)}",
    )
    p.add_argument(
        "--sampler",
        metavar="KIND",
        help="how stacks are read: auto (the default), native (GIL-free or fail) or gil",
    )
    p.add_argument(
        "--native", metavar="off|on", help="also record the native frames below a C call (Linux)"
    )
    p.add_argument(
        "--cpu-wait",
        metavar="exclude|include",
        help="whether time the loop thread "
        "waited for a CPU counts toward a block (default exclude)",
    )
    p.add_argument(
        "--gc",
        metavar="exclude|include",
        help="whether garbage collection counts toward a block (default exclude)",
    )
    p.add_argument(
        "--allow",
        metavar="PATTERN",
        action="append",
        default=[],
        help="a call "
        "site allowed to block (repeatable): module:function, module, path/glob.py "
        "or path/glob.py:function (paths relative to the current directory)",
    )
    p.add_argument("--json", metavar="PATH", help="write the JSON report to this file at exit")
    p.add_argument("--html", metavar="PATH", help="write the HTML report to this file at exit")
    p.add_argument(
        "--max-lag",
        metavar="DURATION",
        help="the loop-lag objective: a loop whose "
        "lag (how late a timer every 10 ms runs) exceeds it is reported at exit",
    )
    p.add_argument(
        "--fail-on",
        metavar="block|lag",
        action="append",
        default=[],
        help=f"exit with status {FAIL_ON_STATUS} when a block over the threshold "
        "(block) or a lag over --max-lag (lag) happened (repeatable, or "
        "comma-separated)",
    )
    p.add_argument(
        "--context-var",
        metavar="NAME",
        action="append",
        default=[],
        help="name the value of this context variable (contextvars.ContextVar's "
        "name) in a block's report, as the request the blocked task served had it "
        "(repeatable)",
    )
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="-- COMMAND [ARGS...]")
    return p


def parse(argv: Sequence[str]) -> tuple[RunSettings, list[str]]:
    """Settings and command; raises :class:`SettingError` naming a bad option (argparse's own
    errors exit with status 2)."""
    args = parser().parse_args(list(argv))
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise SettingError(
            "no command to run; expected python -m loopguard run [OPTIONS] -- COMMAND [ARGS...]"
        )
    s = RunSettings()
    if args.threshold is not None:
        s.threshold = parse_duration(args.threshold, name="--threshold", source=_SOURCE)
    for attr, option, choices in (
        ("sampler", "--sampler", SAMPLERS),
        ("native", "--native", NATIVE_CHOICES),
        ("cpu_wait", "--cpu-wait", CPU_WAIT_CHOICES),
        ("gc", "--gc", GC_CHOICES),
    ):
        value = getattr(args, attr)
        if value is not None:
            setattr(s, attr, parse_choice(value, choices, name=option, source=_SOURCE))
    s.allow = tuple(args.allow)
    s.patterns()  # checked now
    for attr, option in (("json_path", "--json"), ("html_path", "--html")):
        value = getattr(args, attr.split("_")[0])
        if value is not None:
            if not value.strip():
                raise SettingError(
                    f"invalid value for {option}: {value!r} (from {_SOURCE}); expected a path"
                )
            path = Path(os.path.expanduser(value)).absolute()
            check_writable(path, name=option, source=_SOURCE)
            setattr(s, attr, path)
    if args.max_lag is not None:
        s.max_lag = parse_duration(args.max_lag, name="--max-lag", source=_SOURCE)
    fail_on = []
    for value in args.fail_on:
        for item in value.split(","):
            fail_on.append(parse_choice(item, FAIL_ON_CHOICES, name="--fail-on", source=_SOURCE))
    s.fail_on = tuple(dict.fromkeys(fail_on))
    if "lag" in s.fail_on and s.max_lag is None:
        raise SettingError(
            f"invalid value for --fail-on: 'lag' (from {_SOURCE}); expected --max-lag too "
            "(the lag it fails on)"
        )
    for name in args.context_var:
        if not name.strip() or not name.strip().isidentifier():
            raise SettingError(
                f"invalid value for --context-var: {name!r} (from {_SOURCE}); expected the name "
                "of a context variable, such as request_id"
            )
    s.context_vars = tuple(n.strip() for n in args.context_var)
    return s, command


# --- loop lag --------------------------------------------------------------------------------


class LoopLag:
    """The lag measured on one loop (seconds)."""

    def __init__(self, number: int, kind: str, thread: str) -> None:
        self.number = number
        self.kind = kind
        self.thread = thread
        self.samples = 0
        self.max = 0.0
        self.lags: collections.deque[float] = collections.deque(maxlen=_LAG_KEPT)

    def add(self, lag: float) -> None:
        self.samples += 1
        if lag > self.max:
            self.max = lag
        self.lags.append(lag)

    def to_json(self) -> dict[str, Any]:
        ordered = sorted(self.lags)

        def pct(q: float) -> float:
            if not ordered:
                return 0.0
            return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

        return {
            "pid": os.getpid(),
            "loop": self.number,
            "kind": self.kind,
            "thread": self.thread,
            "samples": self.samples,
            "p50_ms": round(pct(0.50) * 1000.0, 3),
            "p99_ms": round(pct(0.99) * 1000.0, 3),
            "max_ms": round(self.max * 1000.0, 3),
        }


def lag_lines(loops: list[dict[str, Any]], max_lag: Optional[float]) -> list[str]:
    """The loop-lag figures printed at exit, one line per loop."""
    if not loops:
        return ["loopguard: loop lag: no asyncio or uvloop loop ran (trio runs are not probed)"]
    head = f"loopguard: loop lag (how late a timer every {format_duration(LAG_PROBE_INTERVAL)} ran)"
    if max_lag is not None:
        head += f", objective under {format_duration(max_lag)}"
    out = [head + ":"]
    pids = {loop["pid"] for loop in loops}
    for loop in loops:
        where = f"pid {loop['pid']} " if len(pids) > 1 else ""
        over = (
            "  OVER --max-lag" if max_lag is not None and loop["max_ms"] > max_lag * 1000.0 else ""
        )
        out.append(
            f"    {where}{loop['kind']} loop {loop['loop']} (thread {loop['thread']!r}): "
            f"p50 {format_duration(loop['p50_ms'] / 1000)}, "
            f"p99 {format_duration(loop['p99_ms'] / 1000)}, "
            f"max {format_duration(loop['max_ms'] / 1000)} over {loop['samples']} samples{over}"
        )
    return out


# --- the session -----------------------------------------------------------------------------


class Session:
    """What one process (the program, or one of its children) sees while it runs."""

    def __init__(self, settings: RunSettings, *, directory: str, child: bool) -> None:
        self.settings = settings
        self.directory = directory
        self.child = child
        self.judge = Judge(
            Path.cwd(), allow=settings.patterns(), gc=settings.gc, cpu_wait=settings.cpu_wait
        )
        self.verdicts: list[Verdict] = []
        self.loops: list[LoopLag] = []
        self._by_loop: weakref.WeakKeyDictionary[Any, LoopLag] = weakref.WeakKeyDictionary()
        self._lock = threading.RLock()  # a SIGTERM handler may finish on a thread holding it
        self._stop = threading.Event()
        self._reporter: Optional[threading.Thread] = None
        self._pending: list[tuple[float, BlockEvent]] = []
        self._finished = False
        self._seen: set[int] = set()
        """Watchdog ids of the events seen while they stay in the runtime's log."""
        self._token: Optional[int] = None
        self.stopped_by: Optional[str] = None

    # lifetime

    def start(self) -> None:
        self._token = runtime.acquire(self.settings.threshold, self.settings.sampler)
        _native.set_native_stacks(self.settings.native == "on")
        runtime.set_context("")
        runtime.lag_listener = self._new_loop
        runtime.probe_lag(True)
        _asgi.install(bool(self.settings.context_vars))
        self._reporter = threading.Thread(
            target=self._report_loop, name="loopguard-reporter", daemon=True
        )
        _start_without_signals(self._reporter)

    def _new_loop(self, kind: str, loop: Any) -> Callable[[float], None]:
        # One loop run again (asyncio.run runs its loop three times) is one loop.
        with self._lock:
            lag = self._by_loop.get(loop)
            if lag is None:
                lag = LoopLag(len(self.loops) + 1, kind, threading.current_thread().name)
                self.loops.append(lag)
                try:
                    self._by_loop[loop] = lag
                except TypeError:  # not weakly referenceable
                    pass
        return lag.add

    def _report_loop(self) -> None:
        while not self._stop.wait(_POLL):
            try:
                self.poll()
            except Exception as e:  # never let the program see it; say it once
                _say(f"loopguard: the reporter stopped: {type(e).__name__}: {e}")
                return

    def poll(self, *, everything: bool = False) -> None:
        """Judge and print the blocks the watchdog has finished (``everything``: at the end,
        every one, without waiting for their requests to answer)."""
        runtime.collect(everything=everything)
        new = self._new_events()
        now = time.monotonic()
        with self._lock:
            self._pending.extend((now, e) for e in new)
            ready = [e for t, e in self._pending if everything or _asgi.settled(e) or now - t > 1.0]
            self._pending = [(t, e) for t, e in self._pending if not any(e is r for r in ready)]
        for ev in ready:
            self._judge(ev)

    def _new_events(self) -> list[BlockEvent]:
        """The events logged since the last look. Taken from the runtime's log while this
        session is its only user; left there (and forgotten after :data:`_KEEP_FOR_GUARDS`)
        while the program has a ``loopguard.guard()`` of its own open, which judges them at
        its exit."""
        if not runtime.events:
            return []
        if runtime.users <= 1:
            taken = runtime.take_events(lambda e: True)
            seen, self._seen = self._seen, set()
            return [e for e in taken if e.id not in seen]
        new = [e for e in runtime.events_between(0, 2**63) if e.id not in self._seen]
        self._seen.update(e.id for e in new)
        runtime.trim(_native.now_ns() - int(_KEEP_FOR_GUARDS * 1e9))
        if len(self._seen) > 10_000:
            self._seen &= {e.id for e in runtime.events_between(0, 2**63)}
        return new

    def _judge(self, ev: BlockEvent) -> None:
        s = self.settings
        if ev.duration < s.threshold:
            return
        v = self.judge.judge(ev, test="", phase="outside", threshold=s.threshold, mode="fail")
        v.event.request = _asgi.context_of(ev, s.context_vars) or None  # the judged copy's
        with self._lock:
            self.verdicts.append(v)
        if v.outcome == "allowed":
            return
        if v.outcome == "failed":
            lines = format_event(v.event)  # with the request it served
            if self.child:
                lines[0] += f" (pid {os.getpid()})"
            _say("\n".join(lines) + "\n")
        else:
            _say(
                f"loopguard: recorded a {format_duration(ev.duration)} block at "
                f"{ev.site or '?'}: {v.reason}"
            )

    def finish(self, *, stopped_by: Optional[str] = None) -> bool:
        """Collect the last blocks and write what this process writes; True when ``--fail-on``
        found what it names (the parent's whole run, children included). Runs once."""
        if self._finished:
            return False
        self._finished = True
        self.stopped_by = stopped_by
        self._stop.set()
        if self._reporter is not None and self._reporter is not threading.current_thread():
            self._reporter.join(timeout=5.0)
        runtime.probe_lag(False)
        try:
            self.poll(everything=True)
        except Exception as e:
            _say(f"loopguard: could not collect the last blocks: {type(e).__name__}: {e}")
        data = self._data()
        if self.child:
            path = Path(self.directory) / f"child-{os.getpid()}.json"
            try:
                write_atomically(path, report_chunks(data))
            except FileNotFoundError:
                pass  # the parent has finished already: nobody would read it
            return False
        return self._finish_parent(data)

    def _data(self) -> dict[str, Any]:
        from . import __version__

        with self._lock:
            verdicts = list(self.verdicts)
            loops = [lag.to_json() for lag in self.loops if lag.samples]
        run = new_run(interrupted=self.stopped_by is not None, guarded=1)
        run["pid"] = os.getpid()
        run["argv"] = list(sys.argv)
        if self.stopped_by:
            run["stopped_by"] = self.stopped_by
        data = report_data(
            verdicts,
            root=Path.cwd(),
            settings=self.settings.as_json(),
            fixed=[],
            loopguard_version=__version__,
            pytest_version="",
            sampler=runtime.sampler,
            run=run,
        )
        data["events"] = list(data["events"])  # read more than once (JSON report, HTML page)
        data["lag"] = {
            "probe_interval_ms": LAG_PROBE_INTERVAL * 1000.0,
            "max_lag_ms": self.settings.as_json()["max_lag_ms"],
            "loops": loops,
        }
        return data

    def _finish_parent(self, data: dict[str, Any]) -> bool:
        from ._merge import merge
        from ._reportfile import read_report

        s = self.settings
        children = self._children_reports()
        verdicts = list(self.verdicts)
        loops = list(data["lag"]["loops"])
        if children:
            mine = Path(self.directory) / f"parent-{os.getpid()}.json"
            write_atomically(mine, report_chunks(data))
            try:
                reports = [read_report(mine)]
                for path in children:
                    reports.append(read_report(path))
                    loops.extend(reports[-1].data.get("lag", {}).get("loops", []))
                merged = merge(reports)
            except Exception as e:  # a child's report that cannot be read: keep ours
                _say(f"loopguard: the reports of the child processes were not merged: {e}")
            else:
                merged["lag"] = {**data["lag"], "loops": loops}
                data = merged
                verdicts = [v for r in reports for v in r.verdicts]
        out = [""]
        shown = [v for v in verdicts if v.outcome != "allowed"]
        if shown:
            out.append("==== loopguard: blocking hotspots ====")
            for text, _ in summary_lines(shown, 0):
                out.append(text.replace(" in 0 tests,", ","))
        else:
            out.append(f"loopguard: no block over the threshold ({format_duration(s.threshold)})")
        out.extend(lag_lines(loops, s.max_lag))
        if s.json_path is not None:
            write_atomically(s.json_path, report_chunks(data))
            out.append(f"loopguard: JSON report written to {s.json_path}")
        if s.html_path is not None:
            from ._html import render

            data["events"] = list(data["events"])
            write_atomically(s.html_path, render(data))
            out.append(f"loopguard: HTML report written to {s.html_path}")
        failing = []
        if "block" in s.fail_on:
            n = sum(1 for v in verdicts if v.outcome == "failed")
            if n:
                failing.append(f"{n} block{'s' * (n != 1)} over the threshold")
        if "lag" in s.fail_on and s.max_lag is not None:
            worst = max((loop["max_ms"] for loop in loops), default=0.0)
            if worst > s.max_lag * 1000.0:
                failing.append(
                    f"loop lag {format_duration(worst / 1000)} over --max-lag "
                    f"{format_duration(s.max_lag)}"
                )
        if failing:
            out.append(f"loopguard: --fail-on: {'; '.join(failing)}: exit status {FAIL_ON_STATUS}")
        _say("\n".join(out))
        return bool(failing)

    def _children_reports(self) -> list[Path]:
        """The children's reports; waits (bounded) for those of children still running."""
        d = Path(self.directory)
        deadline = time.monotonic() + _CHILD_WAIT
        while True:
            started = {p.name.split("-")[1].split(".")[0] for p in d.glob("child-*.started")}
            done = {p.name.split("-")[1].split(".")[0] for p in d.glob("child-*.json")}
            waiting = [pid for pid in started - done if _alive(int(pid))]
            if not waiting or time.monotonic() > deadline:
                return sorted(d.glob("child-*.json"))
            time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited, not reaped yet) is done
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


_say_lock = threading.RLock()


def _say(text: str) -> None:
    with _say_lock:
        try:
            sys.stderr.write(text + "\n")
            sys.stderr.flush()
        except (OSError, ValueError):
            pass


# --- signals ---------------------------------------------------------------------------------


# Raised by a thread's own faults: never blocked.
_SYNCHRONOUS = {"SIGSEGV", "SIGBUS", "SIGFPE", "SIGILL", "SIGTRAP", "SIGSYS"}


def _start_without_signals(thread: threading.Thread) -> None:
    """Start ``thread`` with the program's signals blocked in it (it inherits the starting
    thread's mask, restored right after): a signal sent to the process then goes to a thread of
    the program, as for loopguard's native threads (see ``src/quiet.rs``)."""
    if not hasattr(signal, "pthread_sigmask"):
        thread.start()
        return
    blocked = {s for s in signal.valid_signals() if getattr(s, "name", "") not in _SYNCHRONOUS}
    saved = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
    try:
        thread.start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, saved)


_session: Optional[Session] = None
"""This process's session (a forked child gets its own: see :func:`_after_fork`)."""


def _install_sigterm() -> None:
    """Write the reports on SIGTERM when the program has no handler of its own (then die of
    it, as the program would have). A handler the program installs replaces this one; if it
    puts this one back and raises the signal again (uvicorn does), it runs then."""
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return
    signal.signal(signal.SIGTERM, _on_sigterm)


def _on_sigterm(signum: int, frame: Any) -> None:
    failed = _session.finish(stopped_by="SIGTERM") if _session is not None else False
    _die(signal.SIGTERM, FAIL_ON_STATUS if failed else None)


def _die(signum: int, status: Optional[int]) -> None:
    """End the process now: with ``status``, or else of the signal ``signum``."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):
            pass
    if status is not None:
        os._exit(status)
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)
    time.sleep(5)  # the signal ends the process
    os._exit(128 + signum)


# --- the command -----------------------------------------------------------------------------


def main(argv: Sequence[str]) -> int:
    from ._target import TargetError, resolve_target, run_target

    try:
        settings, command = parse(argv)
        target = resolve_target(command)
    except (SettingError, TargetError) as e:
        print(f"loopguard: error: {e}", file=sys.stderr)
        return USAGE_ERROR
    global _session
    directory = tempfile.mkdtemp(prefix="loopguard-run-")
    session = _session = Session(settings, directory=directory, child=False)
    try:
        session.start()
    except RuntimeError as e:
        print(f"loopguard: error: cannot start the watchdog: {e}", file=sys.stderr)
        return USAGE_ERROR
    _export_to_children(settings, directory)
    _install_sigterm()
    if hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=_after_fork)
    outcome = run_target(target)
    _join_threads()
    stopped = "SIGINT" if outcome.signal == signal.SIGINT else None
    if _session is not session:
        # A forked child (os.fork, gunicorn's workers) whose program returned here.
        if _session is not None:
            _session.finish(stopped_by=stopped)
        if outcome.signal is not None:
            _die(outcome.signal, None)
        return outcome.status
    failed = session.finish(stopped_by=stopped)
    _clean(directory)
    if failed:
        return FAIL_ON_STATUS
    if outcome.signal is not None:
        _die(outcome.signal, None)
    return outcome.status


def _export_to_children(settings: RunSettings, directory: str) -> None:
    site = str(Path(__file__).with_name("_run_site"))
    os.environ[CHILD_ENV] = settings.for_child(directory)
    path = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = site + (os.pathsep + path if path else "")


def _join_threads() -> None:
    """Wait for the program's non-daemon threads, as the interpreter would before exiting."""
    for t in threading.enumerate():
        if t is not threading.current_thread() and not t.daemon and t.is_alive():
            t.join()


def _clean(directory: str) -> None:
    import shutil

    shutil.rmtree(directory, ignore_errors=True)


def start_child() -> None:
    """Start watching in a child process of ``python -m loopguard run`` (called by its
    ``sitecustomize``)."""
    text = os.environ.get(CHILD_ENV)
    if not text:
        return
    settings, directory = RunSettings.from_child(text)
    if not os.path.isdir(directory):
        return
    _start_child_session(settings, directory)
    _install_sigterm()


def _start_child_session(settings: RunSettings, directory: str) -> None:
    global _session
    session = _session = Session(settings, directory=directory, child=True)
    session.start()
    Path(directory, f"child-{os.getpid()}.started").touch()
    atexit.register(session.finish)
    # multiprocessing's fork children end with os._exit(), after running its finalizers (those
    # registered once it has cleared the parent's).
    util = sys.modules.get("multiprocessing.util")
    if util is not None:
        util.register_after_fork(session, _finalize_in_process)


def _finalize_in_process(session: Session) -> None:
    import multiprocessing.util

    multiprocessing.util.Finalize(None, session.finish, exitpriority=0)


def _after_fork() -> None:
    """In a child forked without a new interpreter (``os.fork``, multiprocessing's fork start
    method, gunicorn's workers): a session of its own, its report beside the others. The
    watchdog starts afresh in the child (see ``_native.after_fork_child``)."""
    parent = _session
    if parent is None or parent._finished:
        return
    runtime.take_events(lambda e: True)  # the parent's, not collected yet: the parent's to report
    try:
        _start_child_session(parent.settings, parent.directory)
    except Exception as e:
        _say(f"loopguard: the forked process {os.getpid()} is not watched: {e}")
