"""The block event model: what one block of an event loop was, as users see it.

The watchdog's JSON becomes these objects in :mod:`loopguard._decode`, their report text is
written by :mod:`loopguard._failure`, and what a block means for its test is decided in
:mod:`loopguard._judge`.

Each class writes itself as JSON and reads itself back with a ``to_json``/``from_json`` pair
side by side: the only encoder and decoder of a block. The JSON report's events are these
objects' JSON (with the verdict's fields, :meth:`loopguard._judge.Verdict.to_json`), and so is
what an xdist worker ships to its controller; ``python -m loopguard`` reads reports back with
the same decoders, so the summary, the merged report, the baseline and the HTML page are drawn
from the very model the terminal's report is. Durations are milliseconds in JSON, to the
nanosecond (a duration the watchdog measured reads back as the same float), seconds here; with
a ``root``, file names are written relative to it and read back joined to it.
``docs/events.md`` maps the model onto the watchdog's JSON and the report.
"""

from __future__ import annotations

import linecache
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, TypeVar

from ._files import relative_path, shown_path
from ._repeats import RepeatError, stack_from_json, stack_to_json

__all__ = [
    "BlockEvent",
    "Callback",
    "FormatError",
    "Frame",
    "NativeFrame",
    "Sample",
    "blocking_native",
    "frame",
    "stack_of",
]


@dataclass(frozen=True)
class Frame:
    """One Python frame: where a thread was."""

    filename: str
    lineno: int
    function: str
    text: Optional[str] = field(default=None, compare=False, repr=False)
    """The source line as a report recorded it (``None``: read it from the file)."""

    def __str__(self) -> str:
        """``app/x.py:12 in f``; a library's frame as an import names its file
        (``asyncio/events.py:80 in Handle._run``)."""
        return f"{shown_path(self.filename)}:{self.lineno} in {self.function}"

    @property
    def source(self) -> str:
        """The source line, stripped, or ``""`` when it cannot be read."""
        if self.text is not None:
            return self.text
        return linecache.getline(self.filename, self.lineno).strip() if self.lineno else ""

    def to_json(self, root: Optional[Path] = None, *, source: bool = False) -> dict[str, Any]:
        """``{file, line, function}`` (``file`` relative to ``root``, when given); ``source``:
        with the stripped source line under ``"source"``."""
        file = self.filename if root is None else relative_path(self.filename, root)
        d: dict[str, Any] = {"file": file, "line": self.lineno, "function": self.function}
        if source:
            d["source"] = self.source
        return d

    @classmethod
    def from_json(cls, d: Any, root: Optional[Path] = None) -> Frame:
        """The frame of :meth:`to_json`'s data, with its recorded source line, if any."""
        if not (
            isinstance(d, dict)
            and isinstance(d.get("file"), str)
            and _is(d.get("line"), int)
            and isinstance(d.get("function"), str)
        ):
            raise FormatError(f"expected a frame {{file, line, function}}, found {d!r:.80}")
        filename = _joined(d["file"], root)
        text = d.get("source")
        if isinstance(text, str):
            return cls(filename, d["line"], d["function"], text)
        return frame(filename, d["line"], d["function"])


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
class NativeFrame:
    """One native frame below the Python stack (``--loopguard-native=on``)."""

    function: Optional[str]
    """The function's name (``sqlite3_step``); ``None`` when no symbol covers the address."""
    library: Optional[str]
    """The file name of the library or executable (``libsqlite3.so.0``)."""
    offset: int
    """The address's offset in that library."""
    file: Optional[str] = None
    """Source file, where debug information exists."""
    line: Optional[int] = None

    @property
    def name(self) -> str:
        """``sqlite3_step (libsqlite3.so.0)``; ``libfoo.so+0x1a2b`` without a symbol."""
        if self.function is None:
            return f"{self.library or '?'}+{self.offset:#x}"
        return f"{self.function} ({self.library})" if self.library else self.function

    def __str__(self) -> str:
        text = self.name
        if self.file and self.line:
            text += f" {os.path.basename(self.file)}:{self.line}"
        return text

    def to_json(self) -> dict[str, Any]:
        return {
            "function": self.function,
            "library": self.library,
            "offset": self.offset,
            "file": self.file,
            "line": self.line,
        }

    @classmethod
    def from_json(cls, d: Any) -> NativeFrame:
        """Also reads the watchdog's native frames (the same keys)."""
        r = _Reader(d)
        return cls(
            r.get("function", str, null=True),
            r.get("library", str, null=True),
            r.get("offset", int),
            r.get("file", str, null=True, default=None),
            r.get("line", int, null=True, default=None),
        )


def native_frames(raw: Optional[list[Any]]) -> list[NativeFrame]:
    return [NativeFrame.from_json(f) for f in raw or []]


_C_RUNTIME = ("libc.so", "libc.musl", "ld-linux", "ld-musl", "libpthread.so", "libm.so", "libdl.so")
"""The C runtime's libraries: a function of theirs (a lock, ``memcpy``) that a library's code
was in when sampled names the call less well than that library's own function."""


def blocking_native(stack: list[NativeFrame]) -> NativeFrame:
    """The native function a stack blocked in: its innermost frame with a name (inner frames
    without one are a library's internal functions) outside the C runtime (``sqlite3VdbeExec``
    rather than the ``pthread_mutex_unlock`` it was in), or in it when the stack has nothing
    else (``clock_nanosleep``, ``recv``)."""
    named = [f for f in stack if f.function is not None]
    own = (f for f in named if not (f.library or "").startswith(_C_RUNTIME))
    return next(own, named[0] if named else stack[0])


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
    syscall_object: Optional[str] = None
    """What that system call waited on (``"TCP 127.0.0.1:51234 → 127.0.0.1:8080"``, a path,
    ``"pid 1234 (sleep 1)"``, ``"a lock or condition"``, ``"sleeping"``), Linux only."""
    running: bool = False
    """True when the kernel reported the loop thread on a CPU (running code, not waiting)."""
    callback: Optional[int] = None
    """Index in the event's ``callbacks`` of the callback this sample was taken in."""
    native_stack: list[NativeFrame] = field(default_factory=list)
    """The native frames below the innermost Python frame, innermost first
    (``--loopguard-native=on``)."""
    native_note: Optional[str] = None
    """Why there are no native frames (or only the innermost one), when they were asked for."""

    def to_json(self, root: Optional[Path] = None) -> dict[str, Any]:
        return {
            "offset_ms": _ms(self.offset),
            "count": self.count,
            "stack": _stack_json(self.stack, root),
            "gil": self.gil,
            "gil_holder_ident": self.gil_holder_ident,
            "gil_holder_stack": _stack_json(self.gil_holder_stack, root),
            "late": self.late,
            "error": self.error,
            "task": self.task_name,
            "syscall": self.syscall,
            "syscall_object": self.syscall_object,
            "running": self.running,
            "callback": self.callback,
            "native_stack": [f.to_json() for f in self.native_stack],
            "native_note": self.native_note,
        }

    @classmethod
    def from_json(cls, d: Any, root: Optional[Path] = None) -> Sample:
        r = _Reader(d)
        return cls(
            offset=r.seconds("offset_ms"),
            count=r.get("count", int),
            stack=r.stack("stack", root),
            gil=r.get("gil", str),
            gil_holder_ident=r.get("gil_holder_ident", int, null=True, default=None),
            gil_holder_stack=r.stack("gil_holder_stack", root),
            late=r.get("late", bool, default=False),
            error=r.get("error", str, null=True, default=None),
            task_name=r.get("task", str, null=True, default=None),
            syscall=r.get("syscall", str, null=True, default=None),
            syscall_object=r.get("syscall_object", str, null=True, default=None),
            running=r.get("running", bool, default=False),
            callback=r.get("callback", int, null=True, default=None),
            native_stack=r.each("native_stack", NativeFrame.from_json),
            native_note=r.get("native_note", str, null=True, default=None),
        )


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

    def to_json(self, root: Optional[Path] = None) -> dict[str, Any]:
        return {
            "first_ms": _ms(self.first),
            "last_ms": _ms(self.last),
            "min_ms": _ms(self.min),
            "max_ms": _ms(self.max),
            "samples": self.samples,
            "in_callback": self.in_callback,
            "site": self.site.to_json(root) if self.site is not None else None,
        }

    @classmethod
    def from_json(cls, d: Any, root: Optional[Path] = None) -> Callback:
        r = _Reader(d)
        return cls(
            first=r.seconds("first_ms"),
            last=r.seconds("last_ms"),
            min=r.seconds("min_ms"),
            max=r.seconds("max_ms"),
            samples=r.get("samples", int),
            in_callback=r.get("in_callback", bool),
            site=r.frame("site", root),
        )


@dataclass(slots=True)  # more than 30 attributes: a dict of its own would be 1.2 KB more
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
    await_chain: list[Frame] = field(default_factory=list)
    """The running task's await chain, outermost first: its coroutines' frames, each at its
    current line, down to the innermost one (SQLAlchemy's ``greenlet_spawn``), read while the
    block lasted; empty when ``stack`` shows them (it is set only when the loop thread's stack
    did not reach the task's coroutine: its code ran on a stack of its own, a greenlet's). The
    coroutines awaited what ``stack`` shows."""
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
    fix: Optional[str] = None
    """What to do instead, for this kind of block (``await asyncio.sleep(...) instead of
    time.sleep``): the first rule of :data:`loopguard._fixes.RULES` that matches it."""
    gc_time: float = 0.0
    """Seconds of the block that garbage collection (in any thread) spent on its own work: not
    the finalizers, weakref callbacks and system calls it ran, as far as the block's samples
    show them (see :mod:`loopguard._explain`)."""
    gc_cpu_time: float = 0.0
    """Of ``gc_time``, the seconds the collecting threads were on a CPU, at least (their CPU
    time during those collections, less what may have been spent otherwise): with the time
    spent waiting for a CPU, it tells what the block's own code ran on a busy machine."""
    running: bool = False
    """True when, in that sample, the kernel reported the loop thread on a CPU."""
    syscall: Optional[str] = None
    """The system call the loop thread was blocked in, in the sample that shows ``site``
    (``"recvfrom"``, ``"clock_nanosleep"``, ``"read"``, ...), when the kernel reported one."""
    syscall_object: Optional[str] = None
    """What that system call waited on, in the same sample: a socket's protocol and addresses
    (``"TCP 127.0.0.1:51234 → 127.0.0.1:8080"``), a file's path (``"/tmp/x.fifo (FIFO)"``), the
    child waited for (``"pid 1234 (sleep 1)"``), ``"a lock or condition"`` for a futex,
    ``"sleeping"``, or ``"3 fds"`` for a poll on several; Linux only (the report's clause:
    :func:`loopguard._failure.syscall_clause`)."""
    cpu_wait: Optional[float] = None
    """Seconds of the block during which the loop thread was ready to run but waited for a CPU
    (the kernel's run-queue time), counted from an eighth of the threshold into the block;
    ``None`` when the kernel does not say. For a starved block with ``holder_cpu_wait``, only
    while no other thread held the GIL (the loop could not have run otherwise)."""
    holder_cpu_wait: Optional[float] = None
    """For a starved block: seconds during which the threads holding the GIL were ready to run
    but waited for a CPU while they held it (their run-queue time, per holder, counted from an
    eighth of the threshold into the block; each change of holder may shift it by a twentieth
    of the threshold); ``None`` for a block that was not starvation, or when the kernel does
    not say. It and ``cpu_wait`` cover disjoint moments: they add up (see
    :meth:`machine_wait`)."""
    callbacks: list[Callback] = field(default_factory=list)
    """The callbacks the samples saw in the block's loop iteration, in order (empty when they
    cannot be told apart)."""
    native_stack: list[NativeFrame] = field(default_factory=list)
    """The native frames below the innermost frame of ``stack``, innermost first, in the sample
    that shows ``site`` (``--loopguard-native=on``)."""
    native_note: Optional[str] = None
    """Why ``native_stack`` is empty or holds only the innermost frame, when it was asked for."""
    request: Optional[dict[str, Any]] = None
    """The ASGI request the blocked task served, under ``python -m loopguard run``:
    ``{"request": "GET /reports/daily", "vars": {...}, "trace_id": ..., "span_id": ...}``
    (see :func:`loopguard._asgi.context_of`); ``None`` otherwise."""

    def machine_wait(self) -> tuple[float, float]:
        """``(seconds, by_holder)``: how much of the block was the machine's doing, waiting for
        a CPU, and how much of that the GIL holder waited while it held the GIL. For a block,
        the loop thread's wait (``by_holder`` is 0); for a starved block, the GIL holder's wait
        plus the loop thread's while the GIL was free: the watchdog charges each moment to one
        of them, so the two add up."""
        own = self.cpu_wait or 0.0
        held = (self.holder_cpu_wait or 0.0) if self.starved else 0.0
        return own + held, held

    def longest_callback(self) -> Optional[Callback]:
        """The callback (or stretch between callbacks) that may have lasted longest, when the
        samples saw at least two callbacks; ``None`` otherwise."""
        if sum(1 for c in self.callbacks if c.in_callback) < 2:
            return None
        return max(self.callbacks, key=lambda c: c.max)

    @property
    def context(self) -> Optional[str]:
        return f"{self.test} ({self.phase})" if self.test else None

    def to_json(self, root: Optional[Path] = None, *, samples: bool = True) -> dict[str, Any]:
        """The event as an entry of the JSON report has it (docs/report-schema.json), without
        the verdict's fields (:meth:`loopguard._judge.Verdict.to_json` adds them). ``root``:
        file names relative to it; ``samples``: with the stack samples (only a failure report
        shows them; the JSON report leaves them out). ``request`` is written as ``context``, and
        only when there is one. ``in_debugger`` is not written: such blocks are dropped before
        anything is reported."""
        holder = None
        if self.gil_holder_thread is not None:
            holder = {
                "thread": self.gil_holder_thread,
                "stack": _stack_json(self.gil_holder_stack, root),
            }
        d = {
            "test": self.test or "",
            "began_in": self.phase,
            "duration_ms": _ms(self.duration),
            "threshold_ms": _ms(self.threshold),
            "site": self.site.to_json(root, source=True) if self.site is not None else None,
            "operation": self.innermost.to_json(root) if self.innermost is not None else None,
            "stack": _stack_json(self.stack, root),
            "await_chain": _stack_json(self.await_chain, root),
            "thread": self.thread_name,
            "thread_ident": self.thread_ident,
            "task": self.task_name,
            "loop": self.loop_kind,
            "gil": self.gil,
            "gil_holder": holder,
            "syscall": self.syscall,
            "syscall_object": self.syscall_object,
            "running": self.running,
            "starved": self.starved,
            "several_calls": self.sites_changed,
            "captured_after_ms": _ms(self.captured_after),
            "late": self.late,
            "cause": self.cause,
            "hint": self.hint,
            "fix": self.fix,
            "cpu_wait_ms": _ms(self.cpu_wait),
            "holder_cpu_wait_ms": _ms(self.holder_cpu_wait),
            "gc_ms": _ms(self.gc_time),
            "gc_cpu_ms": _ms(self.gc_cpu_time),
            "native_stack": [f.to_json() for f in self.native_stack],
            "native_note": self.native_note,
            "callbacks": [c.to_json(root) for c in self.callbacks],
            "watchdog_id": self.id,
            "start_ns": self.start_ns,
            "end_ns": self.end_ns,
        }
        if self.request is not None:
            d["context"] = self.request
        if samples:
            d["samples"] = [s.to_json(root) for s in self.samples]
        return d

    @classmethod
    def from_json(cls, d: Any, root: Optional[Path] = None) -> BlockEvent:
        """The event of :meth:`to_json`'s data, or of a JSON report's entry (also one written
        by an older loopguard, without the keys added since: they take their defaults); keys
        a newer writer adds are ignored. Raises :class:`FormatError` naming what is wrong."""
        r = _Reader(d)
        test = r.get("test", str)
        phase = r.get("phase", str, null=True, default=None)
        if "began_in" in r.d:
            phase = r.get("began_in", str, null=True)
        elif phase == "outside":
            phase = None
        holder = _Reader(r.get("gil_holder", dict, null=True, default=None) or {}, "gil_holder")
        return cls(
            id=r.get("watchdog_id", int, default=0),
            duration=r.seconds("duration_ms"),
            threshold=r.seconds("threshold_ms"),
            thread_name=r.get("thread", str, default="?"),
            thread_ident=r.get("thread_ident", int, default=0),
            task_name=r.get("task", str, null=True, default=None),
            captured_after=r.seconds("captured_after_ms", null=True),
            starved=r.get("starved", bool, default=False),
            loop_kind=r.get("loop", str, default="asyncio"),
            test=test or None,
            phase=phase,
            start_ns=r.get("start_ns", int, default=0),
            end_ns=r.get("end_ns", int, default=0),
            samples=r.each("samples", lambda s: Sample.from_json(s, root)),
            site=r.frame("site", root),
            innermost=r.frame("operation", root),
            stack=r.stack("stack", root, required=True),
            await_chain=r.stack("await_chain", root),
            gil=r.get("gil", str, default="unknown"),
            gil_holder_thread=holder.get("thread", str, null=True, default=None),
            gil_holder_stack=holder.stack("stack", root),
            sites_changed=r.get("several_calls", bool, default=False),
            late=r.get("late", bool, default=False),
            cause=r.get("cause", str, null=True, default=None),
            hint=r.get("hint", str, null=True, default=None),
            fix=r.get("fix", str, null=True, default=None),
            gc_time=r.seconds("gc_ms", default=0.0),
            gc_cpu_time=r.seconds("gc_cpu_ms", default=0.0),
            running=r.get("running", bool, default=False),
            syscall=r.get("syscall", str, null=True, default=None),
            syscall_object=r.get("syscall_object", str, null=True, default=None),
            cpu_wait=r.seconds("cpu_wait_ms", null=True),
            holder_cpu_wait=r.seconds("holder_cpu_wait_ms", null=True),
            callbacks=r.each("callbacks", lambda c: Callback.from_json(c, root)),
            native_stack=r.each("native_stack", NativeFrame.from_json),
            native_note=r.get("native_note", str, null=True, default=None),
            request=r.get("context", dict, null=True, default=None),
        )


# --- reading JSON ----------------------------------------------------------------------------


class FormatError(ValueError):
    """JSON that is not what :meth:`BlockEvent.from_json` and its kin read; the message names
    the key (``callbacks[1]: expected 'max_ms' of type number, found nothing``)."""


_T = TypeVar("_T")
_REQUIRED: Any = object()
_TYPE_NAMES = {int: "integer", float: "number", str: "string", bool: "boolean", dict: "object"}


def _is(value: Any, kind: type) -> bool:
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def _kind(value: Any) -> str:
    return "nothing" if value is None else type(value).__name__


def _ms(seconds: Optional[float]) -> Optional[float]:
    """Seconds as JSON's milliseconds, to the nanosecond (the watchdog's unit): read back by
    :meth:`_Reader.seconds`, a duration the watchdog measured is the same float again."""
    return None if seconds is None else round(seconds * 1000.0, 6)


def _joined(file: str, root: Optional[Path]) -> str:
    """A file name as a report has it, as this process names the file (``root``: the report's
    names are relative to it)."""
    if root is None or file.startswith("<") or os.path.isabs(file):
        return file
    return os.path.join(root, file)


class _Reader:
    """Typed reads of one JSON object's keys, each error naming the key (and ``where``)."""

    __slots__ = ("d", "where")

    def __init__(self, d: Any, where: str = "") -> None:
        if not isinstance(d, dict):
            prefix = f"{where}: " if where else ""
            raise FormatError(f"{prefix}expected an object, found {_kind(d)}")
        self.d = d
        self.where = f"{where}: " if where else ""

    def get(self, key: str, kind: type[_T], *, null: bool = False, default: Any = _REQUIRED) -> Any:
        if key not in self.d and default is not _REQUIRED:
            return default
        value = self.d.get(key)
        if value is None and null and key in self.d:
            return None
        if not _is(value, kind):
            raise FormatError(
                f"{self.where}expected {key!r} of type {_TYPE_NAMES.get(kind, kind.__name__)}"
                f"{' or null' if null else ''}, found {_kind(value)}"
            )
        return value

    def seconds(self, key: str, *, null: bool = False, default: Any = _REQUIRED) -> Any:
        """A duration in milliseconds, as seconds."""
        if null and default is _REQUIRED:
            default = None
        if key not in self.d and default is not _REQUIRED:
            return default
        ms = self.get(key, float, null=null)
        return None if ms is None else round(ms * 1e6) / 1e9

    def frame(self, key: str, root: Optional[Path]) -> Optional[Frame]:
        value = self.d.get(key)
        if value is None:
            return None
        try:
            return Frame.from_json(value, root)
        except FormatError as e:
            raise FormatError(f"{self.where}{key}: {e}") from None

    def each(self, key: str, read: Callable[[Any], _T], *, required: bool = False) -> list[_T]:
        items = self.get(key, list, default=_REQUIRED if required else [])
        out = []
        for i, item in enumerate(items):
            try:
                out.append(read(item))
            except FormatError as e:
                raise FormatError(f"{self.where}{key}[{i}]: {e}") from None
        return out

    def stack(self, key: str, root: Optional[Path], *, required: bool = False) -> list[Frame]:
        """A stack :func:`_stack_json` wrote (a run of repeated frames written once)."""
        frames = self.each(key, lambda f: Frame.from_json(f, root), required=required)
        try:
            frames = stack_from_json(self.d.get(key) or [], frames)
        except RepeatError as e:
            raise FormatError(f"{self.where}{key}{e}") from None
        return stack_of(frames)


def _stack_json(stack: list[Frame], root: Optional[Path]) -> list[dict[str, Any]]:
    """A stack's JSON: its frames, each run of repeated frames (a recursion) written once, its
    first frame with ``"repeat": {"frames": N, "times": M}`` (see :mod:`loopguard._repeats`)."""
    return stack_to_json(stack, lambda f: f.to_json(root))
