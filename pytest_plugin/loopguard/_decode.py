"""From the watchdog's JSON to analysed block events, in one step: :func:`decode_events`.

Decoding turns the watchdog's serde JSON (nanoseconds, raw samples; see ``docs/events.md``)
into :class:`~loopguard._events.BlockEvent` objects; analysis picks each block's call site, the
stack to show and who held the GIL; :func:`loopguard._explain.explain` then labels the common
causes (a first import, garbage collection, waiting for a CPU, coverage). A block during which
the loop thread was paused in a debugger is dropped: it is the user's pause, not a block.
"""

from __future__ import annotations

import json
import os
import threading
from collections import Counter
from typing import TYPE_CHECKING, Optional

from ._files import is_user_file, is_wrapper

if TYPE_CHECKING:
    from ._events import BlockEvent, Frame, Sample

# The event model, the explanations and the fixes are imported by the first block decoded: a
# run in which nothing blocks never loads them.

__all__ = ["decode_events", "make_context", "remember_thread", "site_of", "thread_name"]


def _frames(raw: list[dict], repeats: Optional[list[dict]] = None) -> list[Frame]:
    """A stack of the watchdog's JSON; ``repeats``: the blocks of frames that stand for several
    copies of themselves (the watchdog stores a deep recursion's samples folded)."""
    from ._events import frame, stack_of
    from ._repeats import unfold

    frames = [frame(f["filename"], int(f["lineno"]), f["function"]) for f in raw]
    if repeats:
        frames = unfold(frames, [(r["at"], r["frames"], r["times"]) for r in repeats])
    return stack_of(frames)


# Names of threads started while loopguard watched, kept after they exit (an executor's worker
# that starved a loop is often gone by the time its event is reported). Bounded.
THREAD_NAMES: dict[int, str] = {}


def remember_thread(ident: int, name: str) -> None:
    if len(THREAD_NAMES) >= 4096:
        THREAD_NAMES.clear()
    THREAD_NAMES[ident] = name


def thread_name(ident: int) -> str:
    t = threading._active.get(ident)  # type: ignore[attr-defined]
    if t is not None:
        return t.name
    return THREAD_NAMES.get(ident) or f"thread {ident:#x}"


def decode_events(text: str) -> list[BlockEvent]:
    """The events in the watchdog's JSON, analysed and explained; debugger pauses dropped."""
    events = [ev for ev in _decode(text) if not ev.in_debugger]
    if not events:
        return events
    from ._explain import explain
    from ._fixes import fix_for

    for ev in events:
        explain(ev)
        ev.fix = fix_for(ev)
    return events


def _decode(text: str) -> list[BlockEvent]:
    raws = json.loads(text)
    if not raws:
        return []  # (without importing the event model)
    from ._events import BlockEvent, Callback, Sample, native_frames

    own = _assistant_ident()
    out = []
    for raw in raws:
        samples = []
        for s in raw["samples"]:
            holder = s.get("holder") or {}
            samples.append(
                Sample(
                    offset=s["offset_ns"] / 1e9,
                    count=s["count"],
                    stack=_frames(s["frames"], s.get("repeats")),
                    gil=s["gil"],
                    gil_holder_ident=holder.get("thread_ident"),
                    gil_holder_stack=_frames(holder.get("frames", []), holder.get("repeats")),
                    late=s["late"],
                    error=s.get("error"),
                    task_name=s.get("task_name"),
                    syscall=s.get("syscall"),
                    syscall_object=s.get("syscall_object"),
                    running=bool(s.get("running")),
                    callback=s.get("callback"),
                    native_stack=native_frames(s.get("native_stack")),
                    native_note=s.get("native_note"),
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
            await_chain=_frames(raw.get("await_chain", [])),
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
            holder_cpu_wait=(
                raw["holder_cpu_wait_ns"] / 1e9
                if raw.get("holder_cpu_wait_ns") is not None
                else None
            ),
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
        _analyse(ev, own)
        out.append(ev)
    return out


def _assistant_ident() -> Optional[int]:
    """The ident of loopguard's assistant thread, named for the reports, or None."""
    from . import _native

    ident = _native.assistant_ident()
    if ident is not None:
        remember_thread(ident, "loopguard-assistant")
    return ident


CONTEXT_SEP = "\x1f"


def make_context(test: str, phase: str) -> str:
    return f"{phase}{CONTEXT_SEP}{test}"


def _split_context(ctx: str) -> tuple[Optional[str], Optional[str]]:
    if CONTEXT_SEP not in ctx:
        return None, None
    phase, test = ctx.split(CONTEXT_SEP, 1)
    return test, phase


def site_of(stack: list[Frame]) -> Optional[Frame]:
    """The innermost frame of the project's code; without one, the innermost frame that is not
    a blocking-call detector's wrapper."""
    for f in reversed(stack):
        if is_user_file(f.filename):
            return f
    return _innermost(stack)


def _innermost(stack: list[Frame]) -> Optional[Frame]:
    """The innermost frame, looking through the wrappers that a blocking-call detector puts
    around the functions it patches (:func:`loopguard._files.is_wrapper`)."""
    for f in reversed(stack):
        if not is_wrapper(f.filename, f.function):
            return f
    return stack[-1] if stack else None


def _majority_site(samples: list[Sample]) -> Optional[Frame]:
    """The call site most of ``samples`` show (weighted by count; the first seen wins ties)."""
    counts: Counter[Frame] = Counter()
    for s in samples:
        site_ = site_of(_culprit(s))
        if site_ is not None:
            counts[site_] += s.count
    return max(counts, key=lambda f: counts[f]) if counts else None


# The frame the reader puts outermost when every read of a stack ended at a generator
# (src/reader/walk.rs, cut_marker): the frames it has are real, the outer ones are missing.
_CUT_PREFIX = "<outer frames not read"


def _is_cut(stack: list[Frame]) -> bool:
    return (
        bool(stack)
        and stack[0].filename == "<loopguard>"
        and stack[0].function.startswith(_CUT_PREFIX)
    )


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


def _analyse(ev: BlockEvent, own: Optional[int] = None) -> None:
    """Pick the dominant call site, the stack to show and the GIL attribution. ``own``: the
    ident of loopguard's assistant thread, which takes the GIL to name a blocked loop's task:
    a sample that found it holding the GIL shows the loop thread waiting for loopguard, not
    what blocked it (a loaded machine can take the assistant off its CPU for a while there),
    so such samples are left out when there are others."""
    ev.in_debugger = any(_is_debugger_frame(f) for s in ev.samples for f in s.stack)
    samples = [
        s for s in ev.samples if own is None or s.gil != "other" or s.gil_holder_ident != own
    ] or ev.samples
    # A cut stack has no project frame to blame; it counts only when no whole stack was read.
    whole = [s for s in samples if not _is_cut(_culprit(s))]
    judged = whole if any(site_of(_culprit(s)) for s in whole) else samples
    counts: Counter[Frame] = Counter()
    first: dict[Frame, Sample] = {}
    for s in judged:
        site_ = site_of(_culprit(s))
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
        common = _common_site(judged, first[ev.site], total)
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
    if s.syscall is None and s.offset < ev.threshold:
        # An early sample (taken before the block reached the threshold, to tell its callbacks
        # apart) may show the thread on its way to the call it then waits in (a socket read
        # before its poll): the first later sample of the same stack in a named system call.
        # Not a futex wait: that is how a thread waits for the GIL, and code that holds it
        # (a sort, a regex) is made to let go of it when another thread asks (loopguard's
        # assistant does, once per block): a sample in that hand-over shows the running code
        # in a futex, with nobody holding the GIL for an instant.
        s = next(
            (
                x
                for x in judged
                if x.stack == s.stack
                and x.syscall
                and x.syscall != "futex"
                and not x.syscall.startswith("system call")
            ),
            s,
        )
    # A block of several callbacks is shown at the one that surely lasted longest (the line
    # that ran most often across the callbacks may be a short one that many of them share).
    if sum(1 for c in ev.callbacks if c.in_callback) >= 2:
        worst = max(
            range(len(ev.callbacks)), key=lambda i: (ev.callbacks[i].min, ev.callbacks[i].max)
        )
        site_ = ev.callbacks[worst].site
        shown_in = [x for x in ev.samples if x.callback == worst and site_of(_culprit(x)) == site_]
        if site_ is not None and shown_in:
            ev.site, s = site_, shown_in[0]
    ev.stack = s.stack
    if ev.await_chain and s.gil != "other" and not is_user_file(ev.site.filename):
        # The loop thread's own stack (a greenlet's) has no project frame: the call site is the
        # project's line that awaited it, in the task's await chain.
        awaited_at = site_of(ev.await_chain)
        if awaited_at is not None and is_user_file(awaited_at.filename):
            ev.site = awaited_at
    ev.gil = s.gil
    ev.syscall = s.syscall
    # Samples taken before the block reached the threshold do not name the call's object.
    ev.syscall_object = s.syscall_object or next(
        (
            x.syscall_object
            for x in ev.samples
            if x.syscall_object and x.syscall == s.syscall and x.stack == s.stack
        ),
        None,
    )
    ev.running = s.running
    native = _native_sample(ev.samples, ev.site) or s
    ev.native_stack = native.native_stack
    ev.native_note = native.native_note
    if s.gil == "other" and s.gil_holder_ident is not None:
        # The loop thread could not run because another thread held the GIL.
        ev.starved = True
        ev.gil_holder_thread = thread_name(s.gil_holder_ident)
        ev.gil_holder_stack = s.gil_holder_stack
    innermost = _innermost(_culprit(s))
    if innermost is not None and innermost != ev.site:
        ev.innermost = innermost


def _native_sample(samples: list[Sample], site: Optional[Frame]) -> Optional[Sample]:
    """The sample at ``site`` whose native stack to show: of those that have one (samples taken
    before the block reached the threshold have none), the first that blocked in the native
    function seen most often; else the first with a note on why there is none."""
    from ._events import blocking_native

    at_site = [x for x in samples if site_of(_culprit(x)) == site]
    counts: Counter[str] = Counter()
    for x in at_site:
        if x.native_stack:
            counts[blocking_native(x.native_stack).name] += x.count
    if counts:
        top = max(counts, key=lambda name: counts[name])  # first-seen wins ties
        return next(
            x for x in at_site if x.native_stack and blocking_native(x.native_stack).name == top
        )
    return next((x for x in at_site if x.native_note), None)
