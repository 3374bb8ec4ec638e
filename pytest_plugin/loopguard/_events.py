"""Block events as users see them, and the report text that describes them."""

from __future__ import annotations

import json
import linecache
import os
import site
import sys
import sysconfig
import threading
from collections import Counter
from dataclasses import dataclass, field, fields
from typing import Any, Optional

from ._settings import format_duration

__all__ = ["BlockEvent", "Callback", "Frame", "Sample", "format_events", "is_user_file"]

GC_REASON = "under the threshold without garbage collection (--loopguard-gc=include counts it)"
"""Why a block is recorded when it crossed the threshold only with garbage collection."""


@dataclass(frozen=True)
class Frame:
    """One Python frame: where a thread was."""

    filename: str
    lineno: int
    function: str

    def __str__(self) -> str:
        return f"{display_path(self.filename)}:{self.lineno} in {self.function}"

    @property
    def source(self) -> str:
        """The source line, stripped, or ``""`` when it cannot be read."""
        return linecache.getline(self.filename, self.lineno).strip() if self.lineno else ""

    def to_dict(self) -> dict[str, Any]:
        return {"filename": self.filename, "lineno": self.lineno, "function": self.function}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Frame:
        return frame(d["filename"], int(d["lineno"]), d["function"])


# Events share their frames and stacks: a suite's blocks happen in a few places, reached by a
# few paths, so thousands of events hold references to one copy of each (a stack of 40 frames
# is 10 KB as fresh objects, 0.3 KB as a list of shared ones). Bounded: past the limit the
# tables start again (what is shared stays shared).
_FRAMES: dict[tuple[str, int, str], Frame] = {}
_STACKS: dict[tuple[Frame, ...], list[Frame]] = {}
_INTERN_LIMIT = 1 << 16


def frame(filename: str, lineno: int, function: str) -> Frame:
    """The one :class:`Frame` for this place."""
    key = (filename, lineno, function)
    found = _FRAMES.get(key)
    if found is None:
        if len(_FRAMES) >= _INTERN_LIMIT:
            _FRAMES.clear()
        found = _FRAMES[key] = Frame(sys.intern(filename), lineno, sys.intern(function))
    return found


def stack_of(frames: list[Frame]) -> list[Frame]:
    """The one list for this stack (shared by events: never modify a stack in place)."""
    key = tuple(frames)
    found = _STACKS.get(key)
    if found is None:
        if len(_STACKS) >= _INTERN_LIMIT:
            _STACKS.clear()
        found = _STACKS[key] = frames
    return found


@dataclass(frozen=True)
class Sample:
    """One stack sample of a blocked loop thread."""

    offset: float
    """Seconds from the start of the block to this sample."""
    count: int
    """How many consecutive samples looked exactly like this one."""
    stack: list[Frame]
    """The loop thread's stack, outermost frame first."""
    gil: str
    """``"loop"``, ``"released"``, ``"other"`` or ``"unknown"``."""
    gil_holder_ident: Optional[int]
    gil_holder_stack: list[Frame]
    late: bool
    """True when the stack was read by taking the GIL (it may postdate the block)."""
    error: Optional[str]
    task_name: Optional[str]
    syscall: Optional[str] = None
    """The system call the loop thread was blocked in (``"recvfrom"``, ``"clock_nanosleep"``),
    when the kernel reported one."""
    running: bool = False
    """True when the kernel reported the loop thread on a CPU (running code, not waiting)."""
    callback: Optional[int] = None
    """Index in the event's ``callbacks`` of the callback this sample was taken in."""

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["stack"] = [f.to_dict() for f in self.stack]
        d["gil_holder_stack"] = [f.to_dict() for f in self.gil_holder_stack]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Sample:
        d = dict(d)
        d["stack"] = stack_of([Frame.from_dict(f) for f in d["stack"]])
        d["gil_holder_stack"] = stack_of([Frame.from_dict(f) for f in d["gil_holder_stack"]])
        return cls(**d)


@dataclass(frozen=True)
class Callback:
    """One callback of the loop iteration a block was made of, as the samples bound it (or,
    with ``in_callback`` false, a stretch of the loop's own work between callbacks)."""

    first: float
    """Seconds from the start of the block to its first sample."""
    last: float
    """Seconds from the start of the block to its last sample."""
    min: float
    """It lasted at least this long (seconds): from its first sample to its last."""
    max: float
    """It lasted at most this long (seconds): from the sample before it to the one after it
    (or the block's start and end)."""
    samples: int
    in_callback: bool
    site: Optional[Frame] = None
    """The call site in its samples (as ``BlockEvent.site`` for the whole block)."""

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["site"] = self.site.to_dict() if self.site is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Callback:
        d = dict(d)
        d["site"] = Frame.from_dict(d["site"]) if d.get("site") is not None else None
        return cls(**d)


@dataclass
class BlockEvent:
    """One stretch during which an event loop did not get back to its selector.

    ``duration``, ``threshold`` and ``captured_after`` are in seconds. ``stack`` is the loop
    thread's Python stack (outermost first) in the sample that shows the dominant ``site``.
    """

    id: int
    duration: float
    threshold: float
    thread_name: str
    thread_ident: int
    task_name: Optional[str]
    captured_after: Optional[float]
    starved: bool
    loop_kind: str
    test: Optional[str]
    phase: Optional[str]
    start_ns: int
    end_ns: int
    samples: list[Sample] = field(default_factory=list)
    site: Optional[Frame] = None
    """The user-code line that was running (the innermost frame outside libraries)."""
    innermost: Optional[Frame] = None
    """The innermost frame overall, when it differs from ``site``."""
    stack: list[Frame] = field(default_factory=list)
    gil: str = "unknown"
    gil_holder_thread: Optional[str] = None
    gil_holder_stack: list[Frame] = field(default_factory=list)
    sites_changed: bool = False
    """True when samples showed more than one call site (a block made of several calls)."""
    late: bool = False
    """True when the stack could only be read by taking the GIL, so it may have been late."""
    in_debugger: bool = False
    """True when the loop thread was seen inside a debugger (paused at a breakpoint): such a
    pause is not a block, and loopguard does not report it."""
    cause: Optional[str] = None
    """``"import"``, ``"gc"`` or ``"coverage"`` when a common cause explains the block."""
    hint: Optional[str] = None
    """One line on that cause and its usual remedy."""
    gc_time: float = 0.0
    """Seconds of the block during which a garbage collection ran (in any thread)."""
    running: bool = False
    """True when, in that sample, the kernel reported the loop thread on a CPU."""
    syscall: Optional[str] = None
    """The system call the loop thread was blocked in, in the sample that shows ``site``
    (``"recvfrom"``, ``"clock_nanosleep"``, ``"read"``, ...), when the kernel reported one."""
    cpu_wait: Optional[float] = None
    """Seconds of the block during which the loop thread was ready to run but waited for a CPU
    (the kernel's run-queue time), counted from an eighth of the threshold into the block;
    ``None`` when the kernel does not say."""
    callbacks: list[Callback] = field(default_factory=list)
    """The callbacks the samples saw in the block's loop iteration, in order (empty when they
    cannot be told apart)."""

    def crosses(
        self,
        threshold: float,
        gc: str = "exclude",
        cpu_wait: str = "exclude",
        *,
        interrupted: bool = False,
    ) -> bool:
        """Longer than ``threshold``, and not only because of something that was not the
        code's doing (see :meth:`excused`)."""
        if self.duration < threshold:
            return False
        return self.excused(threshold, gc=gc, cpu_wait=cpu_wait, interrupted=interrupted) is None

    def excused(
        self,
        threshold: float,
        *,
        gc: str = "exclude",
        cpu_wait: str = "exclude",
        interrupted: bool = False,
    ) -> Optional[tuple[str, str]]:
        """``(cause, reason)`` when this block, over ``threshold``, is not one piece of code
        blocking for that long; ``None`` when it is. In this order:

        * ``"gc"``: under the threshold without the garbage collection that ran during it
          (``gc="exclude"``);
        * ``"cpu-wait"``: under the threshold without the time the loop thread waited for a
          CPU (``cpu_wait="exclude"``): the machine was overloaded;
        * ``"callbacks"``: a loop iteration of several callbacks, none of which can have
          reached the threshold by the samples around it.

        Each is judged on its own: a block that needs two of them together to get under the
        threshold is not excused. ``interrupted``: raise mode raised inside the block when it
        reached the threshold, so how long its code would have run is not known; only garbage
        collection excuses it.
        """
        if gc == "exclude" and self.gc_time and self.duration - self.gc_time < threshold:
            return "gc", GC_REASON
        if interrupted:
            return None
        if cpu_wait == "exclude" and self.cpu_wait and self.duration - self.cpu_wait < threshold:
            return "cpu-wait", (
                f"under the threshold without {format_duration(self.cpu_wait)} of waiting for "
                "a CPU (the machine was overloaded; --loopguard-cpu-wait=include counts it)"
            )
        longest = self.longest_callback()
        if longest is not None and not self.starved and longest.max < threshold:
            n = sum(1 for c in self.callbacks if c.in_callback)
            where = f" at {longest.site}" if longest.site is not None else ""
            return "callbacks", (
                f"{n} callbacks in one loop iteration, the longest at most "
                f"{format_duration(longest.max)}{where}; none reached the threshold"
            )
        return None

    def longest_callback(self) -> Optional[Callback]:
        """The callback (or stretch between callbacks) that may have lasted longest, when the
        samples saw at least two callbacks; ``None`` otherwise."""
        if sum(1 for c in self.callbacks if c.in_callback) < 2:
            return None
        return max(self.callbacks, key=lambda c: c.max)

    @property
    def context(self) -> Optional[str]:
        return f"{self.test} ({self.phase})" if self.test else None

    def to_dict(self, *, samples: bool = True) -> dict[str, Any]:
        """Plain data (str, int, float, bool, None, lists and dicts): JSON and xdist can carry it.

        :meth:`from_dict` rebuilds an equal event, without re-analysing it (``samples=False``:
        without its samples, which only a failure report shows).
        """
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["samples"] = [s.to_dict() for s in self.samples] if samples else []
        d["stack"] = [f.to_dict() for f in self.stack]
        d["gil_holder_stack"] = [f.to_dict() for f in self.gil_holder_stack]
        d["callbacks"] = [c.to_dict() for c in self.callbacks]
        for key in ("site", "innermost"):
            d[key] = d[key].to_dict() if d[key] is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BlockEvent:
        known = {f.name for f in fields(cls)}
        d = {k: v for k, v in d.items() if k in known}  # newer writers may add keys
        d["samples"] = [Sample.from_dict(s) for s in d.get("samples", [])]
        d["stack"] = stack_of([Frame.from_dict(f) for f in d.get("stack", [])])
        d["gil_holder_stack"] = stack_of(
            [Frame.from_dict(f) for f in d.get("gil_holder_stack", [])]
        )
        d["callbacks"] = [Callback.from_dict(c) for c in d.get("callbacks", [])]
        for key in ("site", "innermost"):
            if d.get(key) is not None:
                d[key] = Frame.from_dict(d[key])
        return cls(**d)

    def summary(self) -> str:
        kind = "starved of the GIL" if self.starved else "blocked"
        return (
            f"event loop {kind} for {format_duration(self.duration)} "
            f"(threshold {format_duration(self.threshold)})"
        )

    def headline(self, more: int = 0) -> str:
        """One line that starts with what matters, for a place that may cut it short (pytest's
        short test summary): ``loopguard: 414 ms at app/scanner.py:18 in scan (...)``."""
        extra = f"; and {more} more block{'s' * (more != 1)}" if more else ""
        if self.site is None:
            return f"loopguard: {self.summary()}{extra}"
        kind = "starved of the GIL" if self.starved else "blocked"
        return (
            f"loopguard: {format_duration(self.duration)} at {self.site} (event loop {kind}, "
            f"threshold {format_duration(self.threshold)}{extra})"
        )


def _frames(raw: list[dict]) -> list[Frame]:
    return stack_of([frame(f["filename"], int(f["lineno"]), f["function"]) for f in raw])


# Names of threads started while loopguard watched, kept after they exit (an executor's worker
# that starved a loop is often gone by the time its event is reported). Bounded.
THREAD_NAMES: dict[int, str] = {}


def remember_thread(ident: int, name: str) -> None:
    if len(THREAD_NAMES) >= 4096:
        THREAD_NAMES.clear()
    THREAD_NAMES[ident] = name


def _thread_name(ident: int) -> str:
    t = threading._active.get(ident)  # type: ignore[attr-defined]
    if t is not None:
        return t.name
    return THREAD_NAMES.get(ident) or f"thread {ident:#x}"


def events_from_json(text: str) -> list[BlockEvent]:
    """Build events from the native watchdog's JSON."""
    out = []
    for raw in json.loads(text):
        samples = []
        for s in raw["samples"]:
            holder = s.get("holder") or {}
            samples.append(
                Sample(
                    offset=s["offset_ns"] / 1e9,
                    count=s["count"],
                    stack=_frames(s["frames"]),
                    gil=s["gil"],
                    gil_holder_ident=holder.get("thread_ident"),
                    gil_holder_stack=_frames(holder.get("frames", [])),
                    late=s["late"],
                    error=s.get("error"),
                    task_name=s.get("task_name"),
                    syscall=s.get("syscall"),
                    running=bool(s.get("running")),
                    callback=s.get("callback"),
                )
            )
        test, phase = _split_context(raw["context"])
        ev = BlockEvent(
            id=raw["id"],
            duration=raw["duration_ns"] / 1e9,
            threshold=raw["threshold_ns"] / 1e9,
            thread_name=raw["thread_name"],
            thread_ident=raw["thread_ident"],
            task_name=raw.get("task_name"),
            captured_after=(
                raw["captured_after_ns"] / 1e9 if raw["captured_after_ns"] is not None else None
            ),
            starved=raw["starved"],
            loop_kind=raw["loop_kind"],
            test=test,
            phase=phase,
            start_ns=raw["start_ns"],
            end_ns=raw["end_ns"],
            samples=samples,
            cpu_wait=raw["cpu_wait_ns"] / 1e9 if raw.get("cpu_wait_ns") is not None else None,
        )
        ev.callbacks = [
            Callback(
                first=c["first_ns"] / 1e9,
                last=c["last_ns"] / 1e9,
                min=c["min_ns"] / 1e9,
                max=c["max_ns"] / 1e9,
                samples=c["samples"],
                in_callback=c["in_callback"],
                site=_majority_site([s for s in samples if s.callback == i]),
            )
            for i, c in enumerate(raw.get("callbacks", []))
        ]
        _analyse(ev)
        out.append(ev)
    return out


CONTEXT_SEP = "\x1f"


def make_context(test: str, phase: str) -> str:
    return f"{phase}{CONTEXT_SEP}{test}"


def _split_context(ctx: str) -> tuple[Optional[str], Optional[str]]:
    if CONTEXT_SEP not in ctx:
        return None, None
    phase, test = ctx.split(CONTEXT_SEP, 1)
    return test, phase


# --- where is user code? -------------------------------------------------------------------

_PKG_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def _library_dirs() -> tuple[str, ...]:
    dirs = set()
    paths = sysconfig.get_paths()
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        if paths.get(key):
            dirs.add(os.path.realpath(paths[key]))
    try:
        for d in site.getsitepackages():
            dirs.add(os.path.realpath(d))
    except AttributeError:  # virtualenv's old site.py
        pass
    return tuple(sorted((d.rstrip(os.sep) + os.sep for d in dirs), key=len, reverse=True))


_LIB_DIRS = _library_dirs()
_user_cache: dict[str, bool] = {}


def is_user_file(filename: str) -> bool:
    """True for code of the project under test: not loopguard, the stdlib or site-packages."""
    cached = _user_cache.get(filename)
    if cached is not None:
        return cached
    if filename.startswith("<"):
        result = False
    else:
        real = os.path.realpath(filename)
        result = not (
            real.startswith(_PKG_DIR)
            or any(real.startswith(d) for d in _LIB_DIRS)
            or f"{os.sep}site-packages{os.sep}" in real
            or f"{os.sep}dist-packages{os.sep}" in real
        )
    _user_cache[filename] = result
    return result


def _site_of(stack: list[Frame]) -> Optional[Frame]:
    for f in reversed(stack):
        if is_user_file(f.filename):
            return f
    return stack[-1] if stack else None


def _majority_site(samples: list[Sample]) -> Optional[Frame]:
    """The call site most of ``samples`` show (weighted by count; the first seen wins ties)."""
    counts: Counter[Frame] = Counter()
    for s in samples:
        site_ = _site_of(_culprit(s))
        if site_ is not None:
            counts[site_] += s.count
    return max(counts, key=lambda f: counts[f]) if counts else None


def _culprit(s: Sample) -> list[Frame]:
    """The stack to blame for a sample: the GIL holder's when another thread held the GIL."""
    if s.gil == "other" and s.gil_holder_stack:
        return s.gil_holder_stack
    return s.stack


# Where a thread paused in a debugger is: bdb/pdb's dispatch and prompt (pdb, breakpoint(),
# pytest --pdb/--trace, IPython's debugger), pydevd (PyCharm, VS Code's debugpy). A tracer that
# only traces (coverage, profilers) has none of these frames, so detection stays on under it.
_DEBUGGER_FILES = ("bdb.py", "pdb.py")
_DEBUGGER_DIRS = (f"{os.sep}pydevd", f"{os.sep}_pydevd_bundle{os.sep}", f"{os.sep}debugpy{os.sep}")


def _is_debugger_frame(f: Frame) -> bool:
    if os.path.basename(f.filename) in _DEBUGGER_FILES and not is_user_file(f.filename):
        return True
    return any(d in f.filename for d in _DEBUGGER_DIRS)


def _common_site(samples: list[Sample], representative: Sample, total: int) -> Optional[Frame]:
    """The innermost user frame of ``representative`` whose function is on the stack in more
    than half of the samples (weighted by count), or None."""
    on_stack: Counter[tuple[str, str]] = Counter()
    for s in samples:
        for key in {(f.filename, f.function) for f in _culprit(s) if is_user_file(f.filename)}:
            on_stack[key] += s.count
    for f in reversed(_culprit(representative)):
        if is_user_file(f.filename) and on_stack[(f.filename, f.function)] * 2 > total:
            return f
    return None


def _analyse(ev: BlockEvent) -> None:
    """Pick the dominant call site, the stack to show and the GIL attribution."""
    ev.in_debugger = any(_is_debugger_frame(f) for s in ev.samples for f in s.stack)
    counts: Counter[Frame] = Counter()
    first: dict[Frame, Sample] = {}
    for s in ev.samples:
        site_ = _site_of(_culprit(s))
        if site_ is None:
            continue
        counts[site_] += s.count
        first.setdefault(site_, s)
    ev.late = bool(ev.samples) and all(s.late for s in ev.samples)
    if not counts:
        return
    ev.site = max(counts, key=lambda f: counts[f])  # first-seen wins ties
    total = sum(counts.values())
    if counts[ev.site] * 2 <= total:
        # No line has most of the samples (a long loop in library code that calls something
        # different each time it is sampled): take the innermost user function that is on
        # the stack in most of them, so the site (and its baseline key) is the same each run.
        common = _common_site(ev.samples, first[ev.site], total)
        if common is not None:
            counts[common] = counts.get(common, 0)
            first.setdefault(common, first[ev.site])
            ev.site = common
    # "Several calls": another function held a real share of the samples (one stray sample at
    # the end of a block, or another line of the same function, does not count).
    by_function: Counter[tuple[str, str]] = Counter()
    for f, n in counts.items():
        by_function[(f.filename, f.function)] += n
    main = (ev.site.filename, ev.site.function)
    ev.sites_changed = any(
        key != main and n >= 2 and n >= 0.2 * total for key, n in by_function.items()
    )
    s = first[ev.site]
    # A block of several callbacks is shown at the one that surely lasted longest (the line
    # that ran most often across the callbacks may be a short one that many of them share).
    if sum(1 for c in ev.callbacks if c.in_callback) >= 2:
        worst = max(
            range(len(ev.callbacks)), key=lambda i: (ev.callbacks[i].min, ev.callbacks[i].max)
        )
        site_ = ev.callbacks[worst].site
        shown_in = [x for x in ev.samples if x.callback == worst and _site_of(_culprit(x)) == site_]
        if site_ is not None and shown_in:
            ev.site, s = site_, shown_in[0]
    ev.stack = s.stack
    ev.gil = s.gil
    ev.syscall = s.syscall
    ev.running = s.running
    if s.gil == "other" and s.gil_holder_ident is not None:
        # The loop thread could not run because another thread held the GIL.
        ev.starved = True
        ev.gil_holder_thread = _thread_name(s.gil_holder_ident)
        ev.gil_holder_stack = s.gil_holder_stack
    shown = _culprit(s)
    if shown and shown[-1] != ev.site:
        ev.innermost = shown[-1]


# --- report text ---------------------------------------------------------------------------


def display_path(filename: str) -> str:
    try:
        rel = os.path.relpath(filename)
    except ValueError:
        return filename
    return filename if rel.startswith("..") else rel


# What ran on the loop thread, as the report's detail line names it (anyio's backends show here).
_KIND_TEXT = {"asyncio": "asyncio loop", "uvloop": "uvloop loop", "trio": "trio run"}

_GIL_TEXT = {
    "loop": "GIL held by the loop thread",
    "released": "GIL released (a system call or C code that releases it)",
    "unknown": "GIL holder unknown",
}


def format_event(
    ev: BlockEvent, *, index: int = 0, total: int = 1, stack: str = "short"
) -> list[str]:
    """The report for one event, as lines. ``stack="full"`` prints every frame of its stacks;
    ``"short"`` folds the library frames between project frames and the test runner's."""
    head = f"loopguard: {ev.summary()}"
    if total > 1:
        head = f"loopguard: block {index + 1} of {total}: {ev.summary()}"
    lines = [head, ""]
    if ev.site is not None:
        lines.append(f"    {ev.site}")
        if ev.site.source:
            lines.append(f"  >     {ev.site.source}")
        if ev.innermost is not None:
            lines.append(f"    blocked in {ev.innermost}, called from {ev.site}")
    elif ev.captured_after is None:
        lines.append(
            "    (the block ended before its stack could be sampled; lower the threshold "
            "to see where it was)"
        )
    else:
        errors = {s.error for s in ev.samples if s.error}
        lines.append(f"    (the stack could not be read: {'; '.join(sorted(errors)) or 'empty'})")
    if ev.sites_changed:
        lines.append("    (the stack changed during the block: it was made of several calls)")
    if ev.hint:
        lines.append(f"    ({ev.hint})")
    lines.append("")
    full = stack == "full"
    if ev.starved and ev.gil_holder_thread:
        lines.append(
            f"  the loop thread {ev.thread_name!r} was waiting for the GIL, held by thread "
            f"{ev.gil_holder_thread!r} (move that work to a process pool, or make it release "
            "the GIL); the holder's stack (most recent call last):"
        )
        lines.extend(_stack_lines(ev.gil_holder_stack, full=full))
        lines.append("")
    if ev.stack:
        lines.append("  Python stack of the loop thread (most recent call last):")
        lines.extend(_stack_lines(ev.stack, full=full))
    detail = [f"loop thread {ev.thread_name!r}", _KIND_TEXT.get(ev.loop_kind, ev.loop_kind)]
    if ev.task_name:
        detail.append(f"task {ev.task_name!r}")
    if ev.gil == "other" and ev.gil_holder_thread:
        detail.append(f"GIL held by thread {ev.gil_holder_thread!r}")
    elif ev.gil == "released" and ev.syscall == "futex":
        # A futex wait that is not for the GIL: a lock, a condition, a thread's join.
        detail.append("GIL released, waiting on a lock (futex)")
    elif ev.gil == "released" and ev.syscall:
        detail.append(f"GIL released, in the system call {ev.syscall}")
    elif ev.gil == "released" and ev.running:
        detail.append("GIL released, running C code that released it")
    elif ev.gil == "loop" and ev.syscall and ev.syscall != "futex":
        # C code blocking in the kernel without letting go of the GIL: every thread waits.
        detail.append(f"GIL held by the loop thread, in the system call {ev.syscall}")
    elif ev.gil in _GIL_TEXT and ev.gil != "unknown":
        detail.append(_GIL_TEXT[ev.gil])
    if ev.captured_after is not None:
        when = f"stack captured {format_duration(ev.captured_after)} after the block began"
        if ev.late:
            when += " (read with the GIL: it may show where the loop was after the block)"
        detail.append(when)
    lines.append("  " + ", ".join(detail))
    return lines


_ASYNCIO_EVENTS = os.sep + os.path.join("asyncio", "events.py")
_TRIO_RUN = os.sep + os.path.join("trio", "_core", "_run.py")


def _dispatch_index(stack: list[Frame]) -> int:
    """Index just past the innermost frame where the event loop dispatched a callback: asyncio's
    ``Handle._run``, trio's ``unrolled_run``, or, for loops that call back from C (uvloop),
    loopguard's own wrapper around the loop's run."""
    for i in range(len(stack) - 1, -1, -1):
        f = stack[i]
        name = f.function.rsplit(".", 1)[-1]
        if (
            (name == "_run" and f.filename.endswith(_ASYNCIO_EVENTS))
            or (name == "unrolled_run" and f.filename.endswith(_TRIO_RUN))
            or f.filename.startswith(_PKG_DIR)
        ):
            return i + 1
    return 0


def _stack_lines(stack: list[Frame], limit: int = 30, *, full: bool = False) -> list[str]:
    """A stack as a traceback's lines. ``full``: every frame. Otherwise without the frames of
    the test runner and event loop outside the callback, library runs folded (see
    :func:`fold_stack`), and the innermost ``limit`` entries (a folded run is one)."""
    if full:
        return [line for f in stack for line in _frame_lines(f)]
    lines = []
    cut = _dispatch_index(stack)
    if cut >= len(stack):
        cut = 0
    entries = fold_stack(stack[cut:])
    start = max(0, len(entries) - limit)  # a folded run is one entry
    hidden = cut + sum(1 if isinstance(e, Frame) else e.count for e in entries[:start])
    if hidden:
        lines.append(f"    ... {hidden} outer frames (test runner and event loop) not shown ...")
    for entry in entries[start:]:
        if isinstance(entry, Frame):
            lines.extend(_frame_lines(entry))
        else:
            lines.append(f"    ... {entry} ...")
    return lines


def _frame_lines(f: Frame) -> list[str]:
    lines = [f'    File "{display_path(f.filename)}", line {f.lineno}, in {f.function}']
    if f.source:
        lines.append(f"      {f.source}")
    return lines


@dataclass(frozen=True)
class Fold:
    """Consecutive library frames of a stack, printed as one line."""

    count: int
    packages: tuple[str, ...]
    """The packages (or standard library modules) the frames are in, in the order seen."""

    def __str__(self) -> str:
        names = list(self.packages)
        if len(names) > 5:
            names = [*names[:4], f"{len(names) - 4} more"]
        return f"{self.count} frames in {', '.join(names)}"


_FOLD_TAIL = 2
"""Frames kept at the inner end of a run of library frames that ends the stack (the blocking
operation and its caller), besides the run's first frame (the entry into the library)."""


def fold_stack(stack: list[Frame]) -> list[Any]:
    """``stack`` (outermost first) as :class:`Frame` and :class:`Fold` entries: each run of
    two or more library frames before or between project frames becomes one :class:`Fold`.
    A run that ends the stack keeps its first frame and its innermost ones (where it blocked).
    A stack without project frames is not folded."""
    user = [is_user_file(f.filename) for f in stack]
    if not any(user):
        return list(stack)
    out: list[Any] = []
    i = 0
    while i < len(stack):
        if user[i]:
            out.append(stack[i])
            i += 1
            continue
        j = i
        while j < len(stack) and not user[j]:
            j += 1
        run = stack[i:j]
        if j == len(stack):  # innermost: the blocking operation, even inside a library
            middle = run[1:-_FOLD_TAIL]
            if len(middle) >= 2:
                out.extend([run[0], _fold(middle), *run[-_FOLD_TAIL:]])
            else:
                out.extend(run)
        elif len(run) >= 2:
            out.append(_fold(run))
        else:
            out.extend(run)
        i = j
    return out


def _fold(frames: list[Frame]) -> Fold:
    packages: dict[str, None] = {}
    for f in frames:
        packages.setdefault(package_of(f.filename), None)
    return Fold(len(frames), tuple(packages))


def package_of(filename: str) -> str:
    """The package a library file belongs to: the top-level name under site-packages
    (``httpx``), the standard library module (``asyncio``, ``json``), or the file's name."""
    if filename.startswith("<"):
        # <frozen importlib._bootstrap>, <string>
        inner = filename.strip("<>").split()[-1]
        return inner.split(".", 1)[0] or filename
    real = os.path.realpath(filename)
    if real.startswith(_PKG_DIR):
        return "loopguard"
    for marker in (f"{os.sep}site-packages{os.sep}", f"{os.sep}dist-packages{os.sep}"):
        if marker in real:
            return _top_name(real.rsplit(marker, 1)[1])
    for d in _LIB_DIRS:
        if real.startswith(d):
            return _top_name(real[len(d) :])
    return os.path.basename(filename)


def _top_name(relpath: str) -> str:
    top = relpath.split(os.sep, 1)[0]
    for suffix in (".py", ".pyc"):
        top = top.removesuffix(suffix)
    return top.split(".", 1)[0] if top.endswith(".so") else top


def format_events(events: list[BlockEvent], *, stack: str = "short") -> str:
    """The report for several events (a test's blocks)."""
    chunks = []
    for i, ev in enumerate(events):
        chunks.append("\n".join(format_event(ev, index=i, total=len(events), stack=stack)))
    return "\n\n".join(chunks)
