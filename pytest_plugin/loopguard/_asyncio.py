"""stdlib asyncio: watched at its selector.

``asyncio.base_events.BaseEventLoop.run_forever`` (which ``run_until_complete``,
``asyncio.run`` and ``asyncio.Runner`` all call) gets a wrapper that registers the loop while the
runtime is active and makes its selector report to the loop's slot: idle just before it waits
(with the time by which it should be back), busy as soon as it is back. On Linux the
``EpollSelector``'s epoll object is wrapped by a native ``EpollProxy``; any other selector gets a
subclass whose ``select`` reports, or, failing that, a native ``SelectorProxy`` in its place.

The wrapper is native (``_native.RunForever``), so that no frame of loopguard's stays under the
loop's callbacks. It does the common case (a loop on an ``EpollSelector``) itself; any other
run goes through :func:`patch_run_forever`'s ``enter`` and ``leave``, before and after it.

A loop that started running before the runtime was wanted is attached from inside a callback
(see :meth:`AsyncioAdapter.attach`) and let go when ``loop.stop()`` is called.
"""

from __future__ import annotations

import asyncio
import asyncio.base_events
import select
import selectors
import threading
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any, Optional

from . import _native

if TYPE_CHECKING:
    from ._adapter import Host
    from ._native import Slot

__all__ = [
    "AsyncioAdapter",
    "adapter",
    "attach_loop",
    "both",
    "on_stop",
    "patch_run_forever",
]


class AsyncioAdapter:
    """The :class:`~loopguard._adapter.LoopAdapter` of stdlib asyncio's loops."""

    kind = "asyncio"
    module = "asyncio"

    def __init__(self) -> None:
        self._watched: set[int] = set()
        """``id()`` of the loops registered when they started running."""
        self._thread_slots: dict[int, Slot] = {}
        """The slot of the loop each thread runs, by thread ident (see :meth:`thread_slot`)."""

    def install(self, host: Host) -> bool:
        cls = asyncio.base_events.BaseEventLoop
        original = cls.run_forever
        if not getattr(original, "_loopguard", False):
            patch_run_forever(
                cls,
                original.__qualname__,
                host,
                self.kind,
                _watch_selector,
                self._watched,
                self._thread_slots,
                native=True,
            )
        return True

    def running(self) -> Optional[tuple[Hashable, Any]]:
        loop = asyncio._get_running_loop()
        if isinstance(loop, asyncio.base_events.BaseEventLoop):
            return ("loop", id(loop)), loop
        return None

    def is_watched(self, loop: Any) -> bool:
        return id(loop) in self._watched

    def attach(self, loop: Any, ended: Callable[[], None]) -> tuple[Slot, Callable[[], None]]:
        return attach_loop(loop, ended, self.kind, _watch_selector, self._thread_slots)

    def thread_slot(self) -> Optional[Slot]:
        """The slot of the loop the current thread runs, if it is an asyncio loop loopguard
        watches (see ``Runtime.own_wait``)."""
        return self._thread_slots.get(threading.get_ident())


adapter = AsyncioAdapter()


def patch_run_forever(
    cls: Any,
    qualname: str,
    host: Host,
    kind: str,
    watch: Callable[[Any, Slot], Callable[[], None]],
    watched: set[int],
    thread_slots: Optional[dict[int, Slot]] = None,
    run: Optional[Callable[[Any], Any]] = None,
    native: bool = False,
) -> None:
    """Give the loop class ``cls`` a ``run_forever`` (named ``qualname``) that, while ``host``
    is active and the watchdog runs, registers the loop as a loop of ``kind`` for as long as
    it runs: ``watch(loop, slot)`` starts its heartbeat and returns the function that stops
    it. ``watched`` holds the ``id()`` of the loops running registered; ``thread_slots``, if
    given, the slot of the loop each thread runs (by thread ident; an outer loop's slot comes
    back when an inner loop stops). ``run``, if given, is called with the loop in place of the
    original ``run_forever`` (uvloop's adapter gives a Python function of its own, to mark
    where the loop calls back from C). ``native``: ``watch`` is :func:`_watch_selector`, and a
    loop on an ``EpollSelector`` may be watched natively, without calling it (see
    ``_native.RunForever``). Shared by asyncio's adapter and uvloop's.

    Whether a run is watched at all follows ``_native.set_run_mode``, which ``host`` sets
    (see ``Runtime``); the functions below run only when the native side cannot do it alone
    (another selector, a lag probe)."""
    original = cls.run_forever

    # The wrapper itself is native (see _native.RunForever): no loopguard frame stays on the
    # stack while the loop runs. Asyncio's debug mode (unittest's IsolatedAsyncioTestCase runs
    # in it) walks the stack down to the test runner at every future, task and callback it
    # creates, and a traceback through the loop shows every frame under its callbacks. The two
    # functions below run before the loop starts and after it stops.
    def enter(loop):  # type: ignore[no-untyped-def]
        if not host.active or loop.is_running() or not _native.is_running():
            return None
        thread = threading.get_ident()
        try:
            slot = _native.register(kind, threading.current_thread().name, thread, loop)
        except RuntimeError:
            return None
        try:
            stop = watch(loop, slot)
            probe = host.start_lag_probe(loop, kind)
        except BaseException:
            slot.unregister()
            raise
        watched.add(id(loop))
        outer = None
        if thread_slots is not None:
            outer = thread_slots.get(thread)
            thread_slots[thread] = slot
        return loop, slot, stop, probe, thread, outer

    def leave(token):  # type: ignore[no-untyped-def]
        loop, slot, stop, probe, thread, outer = token
        try:
            if thread_slots is not None:
                if outer is None:
                    thread_slots.pop(thread, None)
                else:
                    thread_slots[thread] = outer
            watched.discard(id(loop))
            if probe is not None:
                probe.stop()
            stop()
        finally:
            slot.unregister()

    fast = None
    if native and _EPOLL and thread_slots is not None:
        fast = (kind, watched, thread_slots, _EPOLL_SELECTOR, _EPOLL)
    run_forever = _native.RunForever(original if run is None else run, enter, leave, fast)
    # What functools.wraps would give a function, and loopguard's mark.
    for name, value in {
        "__wrapped__": original,
        "__doc__": original.__doc__,
        "__name__": original.__name__,
        "__qualname__": qualname,
        "__module__": original.__module__,
        "_loopguard": True,
    }.items():
        setattr(run_forever, name, value)
    cls.run_forever = run_forever


def attach_loop(
    loop: Any,
    ended: Callable[[], None],
    kind: str,
    watch: Callable[[Any, Slot], Callable[[], None]],
    thread_slots: Optional[dict[int, Slot]] = None,
) -> tuple[Slot, Callable[[], None]]:
    """Register ``loop`` (running the current callback) as a loop of ``kind`` and start its
    heartbeat (``watch``, as for :func:`patch_run_forever`): the ``LoopAdapter.attach`` of
    asyncio's adapter and uvloop's. ``thread_slots``, if given, holds the slot for the
    current thread until the loop is let go."""
    thread = threading.get_ident()
    slot = _native.register(kind, threading.current_thread().name, thread, loop)
    try:
        restore = watch(loop, slot)
        if thread_slots is not None:
            thread_slots[thread] = slot
        unhook = on_stop(loop, ended)
    except BaseException:
        slot.unregister()
        raise
    restore = both(unhook, restore)
    if thread_slots is not None:
        slots = thread_slots

        def forget() -> None:
            slots.pop(thread, None)

        restore = both(forget, restore)
    return slot, restore


def both(first: Callable[[], None], second: Callable[[], None]) -> Callable[[], None]:
    """A function that calls ``first``, then ``second`` even if ``first`` raised."""

    def call_both() -> None:
        try:
            first()
        finally:
            second()

    return call_both


def on_stop(loop: Any, ended: Callable[[], None]) -> Callable[[], None]:
    """Call ``ended`` when ``loop.stop()`` is called (the way out of ``run_forever``, used by
    ``run_until_complete`` and ``asyncio.run``; uvloop's loops have it too); returns the
    function that removes the hook."""
    original = loop.stop

    def stop() -> None:
        ended()
        original()

    loop.stop = stop

    def unhook() -> None:
        if vars(loop).get("stop") is stop:
            del loop.stop

    return unhook


def _watch_selector(loop, slot):  # type: ignore[no-untyped-def]
    """Make ``loop``'s selector report to ``slot`` when it waits; returns the function that
    puts the selector back (call it on the loop's thread, when the loop is not waiting in it,
    or once it has stopped)."""
    selector = getattr(loop, "_selector", None)
    base = type(selector)
    if isinstance(selector, _EPOLL_SELECTOR) and isinstance(
        getattr(selector, "_selector", None), _EPOLL
    ):
        # The common case on Linux: wrap the epoll object (see _native.EpollProxy).
        return _swap_selector(selector, _native.EpollProxy(selector._selector, slot))
    if isinstance(selector, selectors.BaseSelector) and "_loopguard_base" not in vars(base):
        # Give this selector a subclass whose select() beats; Python-to-Python calls stay
        # cheap, which matters: this runs once per loop iteration.
        try:
            selector._loopguard_slot = slot
            selector.__class__ = _guarded_class(base)
        except (TypeError, AttributeError):
            pass
        else:

            def restore_class() -> None:
                selector.__class__ = base
                del selector._loopguard_slot  # type: ignore[attr-defined]

            return restore_class
    if hasattr(selector, "select"):
        return _swap_selector(loop, _native.SelectorProxy(selector, slot))
    return lambda: None


def _swap_selector(owner: Any, proxy: Any) -> Callable[[], None]:
    """Put ``proxy`` in ``owner._selector``; returns the function that puts back what was
    there, unless something else has taken the proxy's place since."""
    original = owner._selector
    owner._selector = proxy

    def restore() -> None:
        if owner._selector is proxy:
            owner._selector = original

    return restore


_EPOLL_SELECTOR = getattr(selectors, "EpollSelector", ())
# The portable build (every platform but Linux) has no EpollProxy: its EpollSelector, like any
# other selector, gets the subclass below.
_EPOLL = getattr(select, "epoll", ()) if hasattr(_native, "EpollProxy") else ()
_guarded_classes: dict[type, type] = {}


def _guarded_class(base: type) -> type:
    """A subclass of the selector class ``base`` whose ``select`` reports idle/busy."""
    cls = _guarded_classes.get(base)
    if cls is None:
        original = base.select

        def select(self, timeout=None):  # type: ignore[no-untyped-def]
            slot = self._loopguard_slot
            ready = original(self, slot.idle(timeout))
            slot.busy()
            return ready

        select.__qualname__ = f"{base.__qualname__}.select"
        cls = type(
            base.__name__,
            (base,),
            {"select": select, "__module__": base.__module__, "_loopguard_base": base},
        )
        _guarded_classes[base] = cls
    return cls
