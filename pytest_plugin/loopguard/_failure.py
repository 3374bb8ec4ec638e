"""The text of a failure: what a test's report says about its blocks.

:func:`format_event` writes one block's report (the call site, the stacks with library frames
and recursion folded, the detail line); :class:`FailureRepr` is what pytest prints for a test
that loopguard failed, and :func:`headline` the line of its short test summary. The session's
report (the hotspot table, the JSON report, annotations) is :mod:`loopguard._report`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from ._events import BlockEvent, Frame
from ._files import PKG_DIR, display_path, is_user_file, is_wrapper, package_of
from ._parse import format_duration
from ._repeats import Repeat, fold_repeats, frames_in, is_marker, marker_text, repeat_lines

__all__ = [
    "FailureRepr",
    "Fold",
    "fold_stack",
    "format_event",
    "format_events",
    "headline",
    "request_text",
    "summary",
    "syscall_clause",
]


def summary(ev: BlockEvent) -> str:
    """``event loop blocked for 312 ms (threshold 100 ms)``."""
    kind = "starved of the GIL" if ev.starved else "blocked"
    return (
        f"event loop {kind} for {format_duration(ev.duration)} "
        f"(threshold {format_duration(ev.threshold)})"
    )


def headline(ev: BlockEvent, more: int = 0) -> str:
    """One line that starts with what matters, for a place that may cut it short (pytest's
    short test summary): ``loopguard: 414 ms at app/scanner.py:18 in scan (...)``."""
    extra = f"; and {more} more block{'s' * (more != 1)}" if more else ""
    if ev.site is None:
        return f"loopguard: {summary(ev)}{extra}"
    kind = "starved of the GIL" if ev.starved else "blocked"
    return (
        f"loopguard: {format_duration(ev.duration)} at {ev.site} (event loop {kind}, "
        f"threshold {format_duration(ev.threshold)}{extra})"
    )


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
    head = f"loopguard: {summary(ev)}"
    if total > 1:
        head = f"loopguard: block {index + 1} of {total}: {summary(ev)}"
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
    if ev.fix:
        lines.append(f"    fix: {ev.fix}")
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
        lines.extend(_chain_lines(ev, full=full))
        lines.extend(_stack_lines(ev.stack, full=full))
        lines.extend(_native_lines(ev))
    detail = [f"loop thread {ev.thread_name!r}", _KIND_TEXT.get(ev.loop_kind, ev.loop_kind)]
    if ev.task_name:
        detail.append(f"task {ev.task_name!r}")
    if ev.gil == "other" and ev.gil_holder_thread:
        detail.append(f"GIL held by thread {ev.gil_holder_thread!r}")
    elif ev.gil == "released" and ev.syscall == "futex":
        # A futex wait that is not for the GIL: a lock, a condition, a thread's join.
        detail.append(f"GIL released, waiting on {ev.syscall_object or 'a lock'} (futex)")
    elif ev.gil == "released" and ev.syscall:
        detail.append(f"GIL released, in the system call {syscall_clause(ev)}")
    elif ev.gil == "released" and ev.running:
        detail.append("GIL released, running C code that released it")
    elif ev.gil == "loop" and ev.syscall and ev.syscall != "futex":
        # C code blocking in the kernel without letting go of the GIL: every thread waits.
        detail.append(f"GIL held by the loop thread, in the system call {syscall_clause(ev)}")
    elif ev.gil in _GIL_TEXT and ev.gil != "unknown":
        detail.append(_GIL_TEXT[ev.gil])
    if ev.captured_after is not None:
        when = f"stack captured {format_duration(ev.captured_after)} after the block began"
        if ev.late:
            when += " (read with the GIL: it may show where the loop was after the block)"
        detail.append(when)
    lines.append("  " + ", ".join(detail))
    if ev.request:
        lines.append("  " + request_text(ev.request))
    return lines


def request_text(request: dict[str, Any]) -> str:
    """The request a blocked task served (``BlockEvent.request``): ``request GET
    /reports/daily (request_id='abc')``, with its trace and span when it had them."""
    parts = []
    if request.get("request"):
        parts.append(f"request {request['request']}")
    variables = request.get("vars") or {}
    if variables:
        parts.append("(" + ", ".join(f"{k}={v!r}" for k, v in variables.items()) + ")")
    if request.get("trace_id"):
        parts.append(f"trace {request['trace_id']} span {request.get('span_id')}")
    return " ".join(parts)


def _chain_lines(ev: BlockEvent, *, full: bool) -> list[str]:
    """The running task's await chain, above the loop thread's own frames (which ran on a stack
    entered from its innermost frame), each part under a marker line."""
    if not ev.await_chain:
        return []
    task = f" {ev.task_name!r}" if ev.task_name else ""
    return [
        f"    [await chain of task{task}: the coroutines that awaited the frames below]",
        *_stack_lines(ev.await_chain, full=full),
        "    [awaited by the chain above: the loop thread's own frames, on a stack of their "
        "own (a greenlet)]",
    ]


# Calls whose object is the child they wait for ("wait4 for pid 1234 (sleep 1)").
_WAITS_FOR = {"wait4", "waitid"}


def syscall_clause(ev: BlockEvent) -> str:
    """The system call and what it waited on, as a report names them: ``recvfrom on TCP
    127.0.0.1:51234 → 127.0.0.1:8080``, ``wait4 for pid 1234 (sleep 1)``, ``clock_nanosleep
    (sleeping)``; the call alone when its object is not known."""
    call, obj = ev.syscall or "", ev.syscall_object
    if not obj:
        return call
    if obj == "sleeping":
        return f"{call} (sleeping)"
    return f"{call} {'for' if call in _WAITS_FOR else 'on'} {obj}"


def _native_lines(ev: BlockEvent) -> list[str]:
    """The native frames under the innermost Python frame, most recent call last."""
    lines = []
    if ev.native_stack:
        lines.append("      native frames below it (most recent call last):")
        lines.extend(f"        {f}" for f in reversed(ev.native_stack))
    if ev.native_note:
        lines.append(f"      (native frames: {ev.native_note})")
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
            or f.filename.startswith(PKG_DIR)
        ):
            return i + 1
    return 0


def _stack_lines(stack: list[Frame], limit: int = 30, *, full: bool = False) -> list[str]:
    """A stack as a traceback's lines, recursion folded as CPython's traceback folds it (see
    :mod:`loopguard._repeats`). ``full``: every other frame. Otherwise without the frames of
    the test runner and event loop outside the callback, library runs folded (see
    :func:`fold_stack`), and at most ``limit`` entries (a folded run is one): the innermost
    ones, and the outermost project frame inside the callback (the test's, or the handler's)."""
    if full:
        return [line for e in fold_repeats(stack) for line in _entry_lines(e)]
    lines = []
    cut = _dispatch_index(stack)
    if cut >= len(stack):
        cut = 0
    outer = stack[:cut]
    if outer:
        hidden = sum(frames_in(f) for f in outer)
        lines.append(f"    ... {hidden} outer frames (test runner and event loop) not shown ...")
        lines.extend(_frame_lines(f)[0] for f in outer if is_marker(f))
    entries = fold_repeats(fold_stack(stack[cut:]))
    if len(entries) > limit:
        head = _head(entries)
        tail = entries[len(entries) - (limit - len(head)) :]
        middle = entries[len(head) : len(entries) - len(tail)]
        lines.extend(line for e in head for line in _entry_lines(e))
        lines.append(f"    ... {sum(frames_in(e) for e in middle)} frames not shown ...")
        lines.extend(_frame_lines(e)[0] for e in middle if isinstance(e, Frame) and is_marker(e))
        entries = tail
    lines.extend(line for e in entries for line in _entry_lines(e))
    return lines


_HEAD = 3
"""Entries at the outer end of a long stack searched for its outermost project frame."""


def _head(entries: list[Any]) -> list[Any]:
    """The outer entries a long stack keeps: up to its outermost project frame, when it is one
    of the first few (a folded run of library frames may come before it)."""
    for i, e in enumerate(entries[:_HEAD]):
        if isinstance(e, Frame) and is_user_file(e.filename):
            return entries[: i + 1]
    return []


def _entry_lines(entry: Any) -> list[str]:
    if isinstance(entry, Repeat):
        return repeat_lines(entry, _entry_lines, "    ")
    if isinstance(entry, Fold):
        return [f"    ... {entry} ..."]
    return _frame_lines(entry)


def _frame_lines(f: Frame) -> list[str]:
    if is_marker(f):
        return [f"    ... {marker_text(f)} ..."]
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
        return f"{self.count} frame{'s' * (self.count != 1)} in {', '.join(names)}"


_FOLD_TAIL = 2
"""Frames kept at the inner end of a run of library frames that ends the stack (the blocking
operation and its caller), besides the run's first frame (the entry into the library)."""


def fold_stack(stack: list[Frame]) -> list[Any]:
    """``stack`` (outermost first) as :class:`Frame` and :class:`Fold` entries: each run of
    two or more library frames before or between project frames becomes one :class:`Fold`.
    A run that ends the stack keeps its first frame and its innermost ones (where it blocked).
    A stack without project frames is not folded. A marker of frames not read is kept, and
    ends a run. Wherever they are, the frames of a wrapper that a blocking-call detector put
    around a function (:func:`loopguard._files.is_wrapper`) are folded: the frames kept are the
    code's and the wrapped call's."""
    if not any(is_user_file(f.filename) for f in stack):
        return _fold_wrappers(list(stack))
    user = [is_user_file(f.filename) or is_marker(f) for f in stack]
    return _fold_wrappers(_fold_runs(stack, user))


def _fold_wrappers(entries: list[Any]) -> list[Any]:
    """``entries`` with each wrapper frame folded, into the fold beside it if there is one."""
    out: list[Any] = []
    for entry in entries:
        if isinstance(entry, Frame) and is_wrapper(entry.filename, entry.function):
            entry = _fold([entry])
        if isinstance(entry, Fold) and out and isinstance(out[-1], Fold):
            packages = dict.fromkeys((*out[-1].packages, *entry.packages))
            entry = Fold(out.pop().count + entry.count, tuple(packages))
        out.append(entry)
    return out


def _fold_runs(stack: list[Frame], user: list[bool]) -> list[Any]:
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


def format_events(events: list[BlockEvent], *, stack: str = "short") -> str:
    """The report for several events (a test's blocks)."""
    chunks = []
    for i, ev in enumerate(events):
        chunks.append("\n".join(format_event(ev, index=i, total=len(events), stack=stack)))
    return "\n\n".join(chunks)


class FailureRepr:
    """A failure report that pytest prints like a traceback and summarises in one line."""

    def __init__(self, events: list[BlockEvent], stack: str = "short") -> None:
        self.events = events
        self.stack = stack
        self.text = format_events(events, stack=stack)
        first = events[0]
        # pytest's short summary cuts this line to the terminal's width: the duration and
        # the call site come first.
        self.reprcrash = _Crash(headline(first, more=len(events) - 1), first)

    def toterminal(self, tw: Any) -> None:
        for i, ev in enumerate(self.events):
            if i:
                tw.line("")
            lines = format_event(ev, index=i, total=len(self.events), stack=self.stack)
            for j, line in enumerate(lines):
                if j == 0:
                    tw.line(line, red=True, bold=True)
                elif line.startswith("  >"):
                    tw.line(line, bold=True)
                else:
                    tw.line(line)

    def __str__(self) -> str:
        return self.text


class _Crash:
    def __init__(self, message: str, ev: BlockEvent) -> None:
        self.message = message
        self.path = ev.site.filename if ev.site else ""
        self.lineno = ev.site.lineno if ev.site else 0
