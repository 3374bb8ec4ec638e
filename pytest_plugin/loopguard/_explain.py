"""Common causes of a block that the call site alone would hide: a first import, garbage
collection and a coverage tracer. Each gets a label and a one-line hint."""

from __future__ import annotations

import collections
import gc
import sys
from typing import Optional

from . import _native
from ._events import BlockEvent, Frame
from ._files import display_path

__all__ = ["explain", "install_gc_log"]

_IMPORTLIB = ("<frozen importlib._bootstrap>", "<frozen importlib._bootstrap_external>")
_GC_MIN_NS = 1_000_000  # collections shorter than 1 ms are not worth remembering

# (start_ns, end_ns) of recent garbage collections, on the watchdog's clock.
_gc_log: collections.deque[tuple[int, int]] = collections.deque(maxlen=256)
_gc_start: list[int] = [0]
_gc_installed = [False]


def _on_gc(phase: str, info: dict) -> None:
    if phase == "start":
        _gc_start[0] = _native.now_ns()
    elif _gc_start[0]:
        end = _native.now_ns()
        if end - _gc_start[0] >= _GC_MIN_NS:
            _gc_log.append((_gc_start[0], end))
        _gc_start[0] = 0


def install_gc_log() -> None:
    """Remember long garbage collections (two clock reads per collection)."""
    if not _gc_installed[0]:
        gc.callbacks.append(_on_gc)
        _gc_installed[0] = True


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
    in_gc = sum(
        max(0, min(end, ev.end_ns) - max(start, ev.start_ns)) for start, end in list(_gc_log)
    )
    ev.gc_time = in_gc / 1e9
    imported = _imported(ev.stack) or _imported(ev.gil_holder_stack)
    if imported is not None:
        ev.cause = "import"
        what = f"importing {display_path(imported)}" if imported else "in the import system"
        ev.hint = (
            f"the block was spent {what} (a first import inside a coroutine): import it at "
            "module level or at start-up"
        )
        return
    if ev.end_ns > ev.start_ns and in_gc >= 0.5 * (ev.end_ns - ev.start_ns):
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
    if ev.end_ns > ev.start_ns and waited * 1e9 >= 0.5 * (ev.end_ns - ev.start_ns):
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
    if _coverage_active():
        ev.cause = "coverage"
        ev.hint = (
            "a coverage tracer was running: code runs several times slower under coverage, "
            "so this block may be shorter without it"
        )
