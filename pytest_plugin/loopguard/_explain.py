"""Common causes of a block that the call site alone would hide: a first import, garbage
collection, a coverage tracer and waiting for a CPU. Each gets a label and a one-line hint.

Garbage collection is remembered through ``gc.callbacks`` (:func:`install_gc_log`): each long
collection's start and end, which thread ran it and the Python frame that was running when it
began (the frame whose allocation, or ``gc.collect()`` call, started it). Between its start and
its end CPython also runs Python code: finalizers (``__del__``), weakref callbacks, and what
they call. That time is the code's, not the collector's: :func:`gc_share` counts as garbage
collection only what the block's stack samples do not show as something else. A sample of the
collecting thread in another frame than the one that started the collection, or in a system
call, or a sample showing that thread without the GIL (the collector holds it throughout its
own work), makes the stretch it speaks for the code's. A stretch no sample speaks for (before
the first sample) stays the collector's.
"""

from __future__ import annotations

import collections
import gc
import sys
import threading
import time
from operator import itemgetter
from typing import TYPE_CHECKING, Any, Optional

from . import _native
from ._files import display_path

if TYPE_CHECKING:
    from typing_extensions import Self

    from ._events import BlockEvent, Frame, Sample

__all__ = ["Collection", "GcShare", "explain", "gc_share", "install_gc_log"]

_IMPORTLIB = ("<frozen importlib._bootstrap>", "<frozen importlib._bootstrap_external>")
_GC_MIN_NS = 1_000_000  # collections shorter than 1 ms are not worth remembering


class Collection(tuple):  # type: ignore[type-arg]
    """One garbage collection of 1 ms or more, on the watchdog's clock: a tuple ``(start_ns,
    end_ns, thread, trigger, cpu_ns)`` with those names (a ``NamedTuple`` written out: the
    generated one compiles its ``__new__`` from source at every import, and this module is
    imported at every start-up).

    ``thread``: ``threading.get_ident()`` of the thread that ran it. ``trigger``: the innermost
    Python frame of that thread when it began (the frame whose allocation or ``gc.collect()``
    call started it); ``None`` when no Python code was running. ``cpu_ns``: the CPU time that
    thread used from its start to its end (the collector's work and the finalizers it ran, not
    the time it waited for a CPU); 0 when not known (a collection of the youngest
    generation)."""

    __slots__ = ()

    def __new__(
        cls, start_ns: int, end_ns: int, thread: int, trigger: Optional[Frame], cpu_ns: int = 0
    ) -> Self:
        return tuple.__new__(cls, (start_ns, end_ns, thread, trigger, cpu_ns))

    start_ns: int = property(itemgetter(0))  # type: ignore[assignment]
    end_ns: int = property(itemgetter(1))  # type: ignore[assignment]
    thread: int = property(itemgetter(2))  # type: ignore[assignment]
    trigger: Optional[Frame] = property(itemgetter(3))  # type: ignore[assignment]
    cpu_ns: int = property(itemgetter(4))  # type: ignore[assignment]

    def _replace(self, *, trigger: Optional[Frame]) -> Collection:
        return Collection(self[0], self[1], self[2], trigger, self[4])

    def __repr__(self) -> str:
        start_ns, end_ns, thread, trigger, cpu_ns = self
        return f"Collection({start_ns=!r}, {end_ns=!r}, {thread=!r}, {trigger=!r}, {cpu_ns=!r})"

    def __getnewargs__(self) -> tuple[Any, ...]:
        return tuple(self)


# Recent long garbage collections.
_gc_log: collections.deque[Collection] = collections.deque(maxlen=256)
_gc_start: list[int] = [0, 0]  # the clock and the collecting thread's CPU time at its start
_gc_installed = [False]


def _frame(filename: str, lineno: int, function: str) -> Any:
    """The trigger's :class:`~loopguard._events.Frame`; before the event model is imported (by
    the first block), a ``(filename, lineno, function)`` tuple that :func:`_collections` turns
    into one: a collection never imports it."""
    make = getattr(sys.modules.get("loopguard._events"), "frame", None)
    if make is None:
        return (filename, lineno, function)
    return make(filename, lineno, function)


def _collections() -> list[Collection]:
    """The log of long collections, every trigger a :class:`~loopguard._events.Frame`."""
    from ._events import frame

    # A copy first (in one C call, which allocates nothing the collector tracks): the loop
    # below allocates, which can start a collection whose callback appends to the log, in
    # this thread or, at a switch, in another.
    return [
        c._replace(trigger=frame(*c.trigger)) if isinstance(c.trigger, tuple) else c
        for c in list(_gc_log)
    ]


def _on_gc(phase: str, info: dict) -> None:
    # Runs at every collection: two clock reads. The thread's CPU time (a system call) is read
    # only for the older generations' collections, the long ones: a collection of the youngest
    # (at most a few thousand objects, ten times as frequent) is long only by the finalizers
    # it runs, and its CPU time stays unknown (0). Only a long one (rare) pays for more.
    # The CPU time is read inside the clock's readings, so that it never exceeds them.
    if phase == "start":
        _gc_start[0] = _native.now_ns()
        _gc_start[1] = _thread_cpu_ns() if info["generation"] else -1
    elif _gc_start[0]:
        cpu = _thread_cpu_ns() - _gc_start[1] if _gc_start[1] >= 0 else 0
        end = _native.now_ns()
        if end - _gc_start[0] >= _GC_MIN_NS:
            # The stop callback runs in the thread, and under the frame, that the start one
            # did: the collection's finalizers have returned by now.
            try:
                f = sys._getframe(1)
            except ValueError:  # called from C code with no Python frame
                trigger = None
            else:
                code = f.f_code
                name = getattr(code, "co_qualname", code.co_name)  # as the stack reader names it
                trigger = _frame(code.co_filename, f.f_lineno or 0, name)
            _gc_log.append(
                Collection(_gc_start[0], end, threading.get_ident(), trigger, max(cpu, 0))
            )
        _gc_start[0] = 0


_ON_GC = _on_gc.__code__
_thread_cpu_ns = time.thread_time_ns


def install_gc_log() -> None:
    """Remember long garbage collections (two clock reads per collection)."""
    if not _gc_installed[0]:
        gc.callbacks.append(_on_gc)
        _gc_installed[0] = True


# How the watchdog spaces the samples of a block (src/policy.rs, sample_interval: a fifth of
# its threshold, 2-50 ms; src/watchdog.rs asks for the next reading that long after the
# previous one was in hand), and how many distinct samples it keeps (src/watchdog.rs,
# MAX_SAMPLES: later readings are folded into the last, whatever they showed).
_MIN_INTERVAL_NS = 2_000_000
_MAX_INTERVAL_NS = 50_000_000
_MAX_SAMPLES = 200
# A reading speaks for the stretch up to the next one, but for no more than this many sampling
# intervals: a longer gap (the watchdog was not scheduled in time) is a stretch no sample saw.
_HOLD_INTERVALS = 1.5


def _sample_interval_ns(threshold: float) -> int:
    return min(max(int(threshold * 1e9) // 5, _MIN_INTERVAL_NS), _MAX_INTERVAL_NS)


def _stretches(ev: BlockEvent) -> list[tuple[int, int, Sample]]:
    """``(start_ns, end_ns, sample)``: the stretch of the block that each sample speaks for.

    A sample of ``count`` readings, the first at ``offset``, speaks for the time from that
    reading to the next sample's (or the block's end), and for no more than ``count`` sampling
    intervals (with some slack). The last sample of a full list speaks for its first reading
    only (later ones were folded into it).

    A sample read late (by taking the GIL) was read at an unknown moment after its offset,
    perhaps once a collection that held the GIL had ended: it speaks only for the time from
    the latest moment its first reading can have happened, which the spacing bounds (the next
    reading is asked for one interval after the previous one is in hand), as does
    ``captured_after`` for the first sample.
    """
    interval = _sample_interval_ns(ev.threshold)
    out = []
    n = len(ev.samples)
    for i, s in enumerate(ev.samples):
        start = ev.start_ns + int(s.offset * 1e9)
        last = i + 1 == n
        nxt = ev.end_ns if last else ev.start_ns + int(ev.samples[i + 1].offset * 1e9)
        readings = max(s.count, 1)
        if last and n >= _MAX_SAMPLES:
            if s.late:
                continue
            readings = 1
        if s.late:
            # Its readings are an interval apart at least, the next sample's an interval
            # after its last (none is asked for after the last sample's); the block's first
            # reading was in hand ``captured_after`` into the block.
            latest = nxt - (readings - 1 if last else readings) * interval
            if i == 0 and ev.captured_after is not None:
                latest = min(latest, ev.start_ns + int(ev.captured_after * 1e9))
            start = max(start, latest)
            end = nxt
        else:
            end = min(nxt, start + int(readings * interval * _HOLD_INTERVALS))
        end = min(end, ev.end_ns)
        if end > start:
            out.append((start, end, s))
    return out


def _same_place(f: Frame, trigger: Frame) -> bool:
    return (
        f.filename == trigger.filename
        and f.function == trigger.function
        and (f.lineno == trigger.lineno or f.lineno <= 0 or trigger.lineno <= 0)
    )


# What a sample shows the thread that ran a collection doing (see _seen_doing).
_COLLECTING, _FINALIZING, _ELSEWHERE = "collecting", "finalizing", "elsewhere"


def _seen_doing(s: Sample, c: Collection, loop_thread: int) -> Optional[str]:
    """What sample ``s`` shows the thread that ran collection ``c`` doing: the collector's own
    work (in the frame that started the collection, or in its ``gc.callbacks`` entry of
    loopguard's, not in a named system call), running the code's (a finalizer, a weakref
    callback, what they call, a system call of theirs), or nothing of the collection's,
    without the GIL (the collector holds it throughout its own work: another thread ran).
    ``None`` when the sample cannot tell."""
    if s.error:
        return None
    if c.thread == loop_thread:
        if s.gil in ("released", "other"):
            return _FINALIZING  # a finalizer let go of the GIL (to sleep, to wait, to read)
        stack, syscall = s.stack, s.syscall
    elif s.gil == "other" and s.gil_holder_ident is not None:
        if s.gil_holder_ident != c.thread:
            return _ELSEWHERE
        stack, syscall = s.gil_holder_stack, None  # the loop thread's call is its GIL wait
    elif s.gil in ("loop", "released"):
        return _ELSEWHERE
    else:
        return None
    # The collector's own system calls are memory management (mmap, munmap, madvise, brk),
    # which the kernel report leaves unnamed ("system call N"); a named one (a sleep, a read,
    # a lock) is a finalizer's, even one written in C.
    if syscall is not None and not syscall.startswith("system call"):
        return _FINALIZING
    if not stack:
        return None
    innermost = stack[-1]
    if innermost.function == _ON_GC.co_name and innermost.filename == _ON_GC.co_filename:
        return _COLLECTING
    if c.trigger is None or not _same_place(innermost, c.trigger):
        return _FINALIZING
    return _COLLECTING


class GcShare(tuple):  # type: ignore[type-arg]
    """How the garbage collections that overlapped a block spent it, in nanoseconds: a tuple
    ``(collector, finalizers, elsewhere, collection, collector_cpu)`` with those names
    (written out, as :class:`Collection` is).

    ``collector``: the collector's own work, and the stretches no sample speaks for.
    ``finalizers``: the code the collector ran (finalizers, weakref callbacks, their system
    calls). ``elsewhere``: other threads' (or the loop's own) work while a collection waited
    for the GIL. ``collection``: the collection that ran the most finalizer time.
    ``collector_cpu``: of ``collector``, the CPU time the collecting threads used, at least
    (what they waited for a CPU is not in it): each collection's CPU time less the time it
    spent outside the block, in finalizers and waiting for the GIL, which could all have been
    on a CPU."""

    __slots__ = ()

    def __new__(
        cls,
        collector: int,
        finalizers: int,
        elsewhere: int,
        collection: Optional[Collection],
        collector_cpu: int = 0,
    ) -> Self:
        return tuple.__new__(cls, (collector, finalizers, elsewhere, collection, collector_cpu))

    collector: int = property(itemgetter(0))  # type: ignore[assignment]
    finalizers: int = property(itemgetter(1))  # type: ignore[assignment]
    elsewhere: int = property(itemgetter(2))  # type: ignore[assignment]
    collection: Optional[Collection] = property(itemgetter(3))  # type: ignore[assignment]
    collector_cpu: int = property(itemgetter(4))  # type: ignore[assignment]

    def __repr__(self) -> str:
        collector, finalizers, elsewhere, collection, collector_cpu = self
        return (
            f"GcShare({collector=!r}, {finalizers=!r}, {elsewhere=!r}, {collection=!r}, "
            f"{collector_cpu=!r})"
        )

    def __getnewargs__(self) -> tuple[Any, ...]:
        return tuple(self)


def gc_share(ev: BlockEvent, collections: list[Collection]) -> GcShare:
    """How ``collections`` spent block ``ev``, by the samples of the block: the stretch each
    sample speaks for (see :func:`_stretches`) is the collector's unless the sample shows the
    collecting thread doing something else."""
    stretches = _stretches(ev)
    own = finalizers = elsewhere = own_cpu = 0
    most, most_ns = None, 0
    for c in collections:
        lo, hi = max(c.start_ns, ev.start_ns), min(c.end_ns, ev.end_ns)
        if hi <= lo:
            continue
        spent = {_FINALIZING: 0, _ELSEWHERE: 0}
        for start, end, s in stretches:
            overlap = min(end, hi) - max(start, lo)
            doing = _seen_doing(s, c, ev.thread_ident) if overlap > 0 else None
            if doing in spent:
                spent[doing] += overlap
        mine = hi - lo - spent[_FINALIZING] - spent[_ELSEWHERE]
        own += mine
        outside = (c.end_ns - c.start_ns) - (hi - lo)
        not_mine = outside + spent[_FINALIZING] + spent[_ELSEWHERE]
        own_cpu += max(0, min(c.cpu_ns - not_mine, mine))
        finalizers += spent[_FINALIZING]
        elsewhere += spent[_ELSEWHERE]
        if spent[_FINALIZING] > most_ns:
            most, most_ns = c, spent[_FINALIZING]
    return GcShare(own, finalizers, elsewhere, most, own_cpu)


def _imported(stack: list[Frame]) -> Optional[str]:
    """What was being imported when ``stack`` is inside the import system: the file whose
    module body runs, ``""`` when the import machinery itself (finding, loading) was running,
    ``None`` when no import was going on."""
    for i, f in enumerate(stack):
        if f.filename in _IMPORTLIB:
            for g in stack[i + 1 :]:
                if g.function == "<module>" and g.filename not in _IMPORTLIB:
                    return g.filename
            return "" if stack[-1].filename in _IMPORTLIB else None
    return None


def _coverage_active() -> bool:
    if "coverage" not in sys.modules:
        return False
    tracer = sys.gettrace()
    if tracer is not None and type(tracer).__module__.split(".")[0] == "coverage":
        return True
    monitoring = getattr(sys, "monitoring", None)
    if monitoring is not None:
        tool = monitoring.get_tool(getattr(monitoring, "COVERAGE_ID", 1))
        return bool(tool) and "coverage" in str(tool).lower()
    return False


def explain(ev: BlockEvent) -> None:
    """Set ``ev.gc_time``, and ``ev.cause`` and ``ev.hint`` when a common cause explains the
    block."""
    share = gc_share(ev, _collections())
    in_gc, in_finalizers = share.collector, share.finalizers
    ev.gc_time = in_gc / 1e9
    ev.gc_cpu_time = share.collector_cpu / 1e9
    imported = _imported(ev.stack) or _imported(ev.gil_holder_stack)
    if imported is not None:
        ev.cause = "import"
        what = f"importing {display_path(imported)}" if imported else "in the import system"
        ev.hint = (
            f"the block was spent {what} (a first import inside a coroutine): import it at "
            "module level or at start-up"
        )
        return
    length = ev.end_ns - ev.start_ns
    if length > 0 and in_gc >= 0.5 * length:
        ev.cause = "gc"
        spent = f"{in_gc / 1e6:.0f} ms of the block was garbage collection"
        if ev.site is not None and "gc.collect(" in ev.site.source:
            ev.hint = f"{spent}, called here explicitly"
        elif ev.site is None:
            ev.hint = f"{spent}: create fewer long-lived objects, or gc.freeze() after start-up"
        else:
            ev.hint = (
                f"{spent}, started by an allocation here, not caused by this line: create "
                "fewer long-lived objects, or gc.freeze() after start-up"
            )
        return
    waited, by_holder = ev.machine_wait()
    if length > 0 and waited * 1e9 >= 0.5 * length:
        ev.cause = "cpu-wait"
        if by_holder >= waited / 2:
            ev.hint = (
                f"the GIL holder waited {by_holder * 1e3:.0f} ms for a CPU while it held the "
                "GIL, not running its code: the machine was overloaded"
            )
        else:
            ev.hint = (
                f"{waited * 1e3:.0f} ms of the block was spent waiting for a CPU, not running "
                "this code: the machine was overloaded"
            )
        return
    collection = share.collection
    if length > 0 and in_finalizers >= 0.5 * length and collection is not None:
        # The code's own block, which a collection only set off: no cause excuses it.
        started = ""
        if collection.trigger is not None:
            where = "here" if collection.trigger == ev.site else f"at {collection.trigger}"
            started = f", in a collection started {where}"
        ev.hint = (
            f"{in_finalizers / 1e6:.0f} ms of the block was spent in finalizers (__del__, "
            f"weakref callbacks) run by the garbage collector{started}: make them quick, or "
            "release what they hold explicitly"
        )
        return
    if _coverage_active():
        ev.cause = "coverage"
        ev.hint = (
            "a coverage tracer was running: code runs several times slower under coverage, "
            "so this block may be shorter without it"
        )
