"""The block event model: what one block of an event loop was, as users see it.

The watchdog's JSON becomes these objects in :mod:`loopguard._decode`, their report text is
written by :mod:`loopguard._failure`, and what a block means for its test is decided in
:mod:`loopguard._judge`. ``docs/events.md`` maps this model onto the two other shapes of an
event: the watchdog's JSON and the public JSON report.
"""

from __future__ import annotations

import linecache
import os
import sys
from dataclasses import dataclass, field, fields
from typing import Any, Optional

from ._files import display_path
from ._parse import format_duration

__all__ = [
    "GC_REASON",
    "BlockEvent",
    "Callback",
    "Frame",
    "NativeFrame",
    "Sample",
    "blocking_native",
    "frame",
    "stack_of",
]

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

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> NativeFrame:
        return cls(d["function"], d["library"], int(d["offset"]), d.get("file"), d.get("line"))


def native_frames(raw: Optional[list[dict[str, Any]]]) -> list[NativeFrame]:
    return [NativeFrame.from_dict(f) for f in raw or []]


def blocking_native(stack: list[NativeFrame]) -> NativeFrame:
    """The native function a stack blocked in: its innermost frame with a name (inner frames
    without one are a library's internal functions)."""
    return next((f for f in stack if f.function is not None), stack[0])


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
    native_stack: list[NativeFrame] = field(default_factory=list)
    """The native frames below the innermost Python frame, innermost first
    (``--loopguard-native=on``)."""
    native_note: Optional[str] = None
    """Why there are no native frames (or only the innermost one), when they were asked for."""

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["stack"] = [f.to_dict() for f in self.stack]
        d["gil_holder_stack"] = [f.to_dict() for f in self.gil_holder_stack]
        d["native_stack"] = [f.to_dict() for f in self.native_stack]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Sample:
        d = dict(d)
        d["stack"] = stack_of([Frame.from_dict(f) for f in d["stack"]])
        d["gil_holder_stack"] = stack_of([Frame.from_dict(f) for f in d["gil_holder_stack"]])
        d["native_stack"] = native_frames(d.get("native_stack"))
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
    """Seconds of the block that garbage collection (in any thread) spent on its own work: not
    the finalizers, weakref callbacks and system calls it ran, as far as the block's samples
    show them (see :mod:`loopguard._explain`)."""
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
    native_stack: list[NativeFrame] = field(default_factory=list)
    """The native frames below the innermost frame of ``stack``, innermost first, in the sample
    that shows ``site`` (``--loopguard-native=on``)."""
    native_note: Optional[str] = None
    """Why ``native_stack`` is empty or holds only the innermost frame, when it was asked for."""

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

        * ``"gc"``: under the threshold without the collector's own work during it
          (``gc_time``; ``gc="exclude"``);
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
        d["native_stack"] = [f.to_dict() for f in self.native_stack]
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
        d["native_stack"] = native_frames(d.get("native_stack"))
        for key in ("site", "innermost"):
            if d.get(key) is not None:
                d[key] = Frame.from_dict(d[key])
        return cls(**d)
