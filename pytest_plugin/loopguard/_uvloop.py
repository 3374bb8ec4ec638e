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

A loop that started running before the runtime was wanted is attached from inside a callback
(see :meth:`UvloopAdapter.attach`) and let go when ``loop.stop()`` is called, as asyncio's are.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any, Optional

from ._asyncio import attach_loop, patch_run_forever

if TYPE_CHECKING:
    from ._adapter import Host
    from ._native import Slot

__all__ = ["UvloopAdapter", "adapter", "is_uvloop"]


class UvloopAdapter:
    """The :class:`~loopguard._adapter.LoopAdapter` of uvloop's loops."""

    kind = "uvloop"
    module = "uvloop"

    def __init__(self) -> None:
        self._watched: set[int] = set()
        """``id()`` of the loops registered when they started running."""

    def install(self, host: Host) -> bool:
        """Patch ``uvloop.Loop.run_forever`` if uvloop is imported; True once patched."""
        uvloop = sys.modules.get("uvloop")
        cls = getattr(uvloop, "Loop", None)
        if cls is None:
            return False
        if not getattr(cls.run_forever, "_loopguard", False):
            patch_run_forever(
                cls,
                f"{cls.__qualname__}.run_forever",
                host,
                self.kind,
                _beat,
                self._watched,
                run=_guarded_run(cls.run_forever),
            )
        return True

    def running(self) -> Optional[tuple[Hashable, Any]]:
        loop = asyncio._get_running_loop()
        if loop is not None and is_uvloop(loop):
            return ("loop", id(loop)), loop
        return None

    def is_watched(self, loop: Any) -> bool:
        return id(loop) in self._watched

    def attach(self, loop: Any, ended: Callable[[], None]) -> tuple[Slot, Callable[[], None]]:
        """Register ``loop``, running the current callback, and start its beat."""
        return attach_loop(loop, ended, self.kind, _beat)


adapter = UvloopAdapter()


def _guarded_run(original: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """What the patched ``run_forever`` runs: the original, under a Python frame of loopguard's.
    uvloop calls back from C, with no Python frame of its own between the code that runs the
    loop and a callback's: this one (``_run_guarded``) marks the spot, for the stack a failure
    report shows (the frames outside it are the test runner's) and for telling one callback's
    samples from the next's (see the native ``callbacks`` module). Stdlib asyncio's loops have
    ``Handle._run`` for that, and no such frame."""

    def _run_guarded(loop: Any) -> Any:
        return original(loop)

    return _run_guarded


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
