"""uvloop: watched by a periodic beat.

uvloop's loop is Cython over libuv: there is no Python selector to wrap and no per-iteration
hook reachable from Python. ``uvloop.Loop`` (the Python subclass every uvloop constructor
returns) gets a ``run_forever`` that registers the loop and schedules a beat: a ``call_later``
chain whose callback tells the slot "running now, back within one interval" (``Slot.beat``).
A loop that is blocked cannot run the beat, so the watchdog sees it miss its deadline.

Detection slack: the block is dated from the moment the missed beat was due, so a block is
detected up to one beat interval late and its reported duration is short by up to one interval
(a tenth of the threshold, 1 to 25 ms; 10 ms at the default 100 ms), plus libuv's 1 ms timer
granularity. ``uvloop.Loop.run_until_complete`` calls ``self.run_forever()`` by attribute, so
``uvloop.run()``, ``uvloop.new_event_loop()``, the uvloop policy and
``asyncio.Runner(loop_factory=uvloop.new_event_loop)`` all go through it.
"""

from __future__ import annotations

import sys
import threading
from typing import Any

from . import _native


def install(rt: Any) -> bool:
    """Patch ``uvloop.Loop.run_forever`` if uvloop is imported; True once patched."""
    uvloop = sys.modules.get("uvloop")
    cls = getattr(uvloop, "Loop", None)
    if cls is None:
        return False
    if getattr(cls.run_forever, "_loopguard", False):
        return True
    original = cls.run_forever

    def run_forever(self):  # type: ignore[no-untyped-def]
        if not rt._needs or self.is_running() or not _native.is_running():
            return original(self)
        return _run_guarded(rt, self, original)

    run_forever.__wrapped__ = original  # type: ignore[attr-defined]
    run_forever.__doc__ = original.__doc__
    run_forever.__qualname__ = f"{cls.__qualname__}.run_forever"
    run_forever._loopguard = True  # type: ignore[attr-defined]
    cls.run_forever = run_forever
    return True


def _run_guarded(rt: Any, loop: Any, original: Any) -> Any:
    try:
        slot = _native.register(
            "uvloop", threading.current_thread().name, threading.get_ident(), loop
        )
    except RuntimeError:
        return original(loop)
    stop = _beat(loop, slot)
    probe = rt.start_lag_probe(loop, "uvloop")
    rt._watched.add(id(loop))
    try:
        return original(loop)
    finally:
        rt._watched.discard(id(loop))
        if probe is not None:
            probe.stop()
        stop()
        slot.unregister()


def _beat(loop: Any, slot: Any) -> Any:
    """Start the beat of ``slot`` on ``loop`` (from its thread); returns the function that
    stops it."""
    call_later = loop.call_later
    handle = None

    def beat() -> None:
        nonlocal handle
        handle = call_later(slot.beat(), beat)

    def stop() -> None:
        if handle is not None:
            handle.cancel()

    beat()
    return stop


def is_uvloop(loop: Any) -> bool:
    cls = getattr(sys.modules.get("uvloop"), "Loop", None)
    return cls is not None and isinstance(loop, cls)


def attach(loop: Any) -> tuple[Any, Any]:
    """Register ``loop``, running the current callback, and start its beat: ``(slot, stop)``.
    Raises ``RuntimeError`` when the watchdog cannot take it."""
    slot = _native.register("uvloop", threading.current_thread().name, threading.get_ident(), loop)
    return slot, _beat(loop, slot)
