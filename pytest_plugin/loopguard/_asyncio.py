"""stdlib asyncio: watched at its selector.

``asyncio.base_events.BaseEventLoop.run_forever`` (which ``run_until_complete``,
``asyncio.run`` and ``asyncio.Runner`` all call) gets a wrapper that registers the loop while the
runtime is active and makes its selector report to the loop's slot: idle just before it waits
(with the time by which it should be back), busy as soon as it is back. On Linux the
``EpollSelector``'s epoll object is wrapped by a native ``EpollProxy``; any other selector gets a
subclass whose ``select`` reports, or, failing that, a native ``SelectorProxy`` in its place.

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

__all__ = ["AsyncioAdapter", "adapter", "both", "on_stop"]


class AsyncioAdapter:
    """The :class:`~loopguard._adapter.LoopAdapter` of stdlib asyncio's loops."""

    kind = "asyncio"
    module: Optional[str] = None

    def __init__(self) -> None:
        self._watched: set[int] = set()
        """``id()`` of the loops registered when they started running."""
        self._thread_slots: dict[int, Slot] = {}
        """The slot of the loop each thread runs, by thread ident (see :meth:`thread_slot`)."""

    def install(self, host: Host) -> bool:
        cls = asyncio.base_events.BaseEventLoop
        original = cls.run_forever
        if getattr(original, "_loopguard", False):
            return True
        watched = self._watched
        thread_slots = self._thread_slots

        # One frame, the loop's whole run long: asyncio's debug mode (unittest's
        # IsolatedAsyncioTestCase runs in it) walks the stack down to the test runner at every
        # future, task and callback it creates, so each frame more here costs at each of them.
        def run_forever(self):  # type: ignore[no-untyped-def]
            if not host.active or self.is_running() or not _native.is_running():
                return original(self)
            thread = threading.get_ident()
            try:
                slot = _native.register("asyncio", threading.current_thread().name, thread, self)
            except RuntimeError:
                return original(self)
            restore = _watch_selector(self, slot)
            probe = host.start_lag_probe(self, "asyncio")
            watched.add(id(self))
            outer = thread_slots.get(thread)
            thread_slots[thread] = slot
            try:
                return original(self)
            finally:
                if outer is None:
                    thread_slots.pop(thread, None)
                else:
                    thread_slots[thread] = outer
                watched.discard(id(self))
                if probe is not None:
                    probe.stop()
                restore()
                slot.unregister()

        run_forever.__wrapped__ = original  # type: ignore[attr-defined]
        run_forever.__doc__ = original.__doc__
        run_forever.__qualname__ = original.__qualname__
        run_forever._loopguard = True  # type: ignore[attr-defined]
        cls.run_forever = run_forever  # type: ignore[method-assign]
        return True

    def running(self) -> Optional[tuple[Hashable, Any]]:
        loop = asyncio._get_running_loop()
        if isinstance(loop, asyncio.base_events.BaseEventLoop):
            return ("loop", id(loop)), loop
        return None

    def is_watched(self, loop: Any) -> bool:
        return id(loop) in self._watched

    def attach(self, loop: Any, ended: Callable[[], None]) -> tuple[Slot, Callable[[], None]]:
        slot = _native.register(
            "asyncio", threading.current_thread().name, threading.get_ident(), loop
        )
        try:
            restore = _watch_selector(loop, slot)
            thread = threading.get_ident()
            self._thread_slots[thread] = slot

            def forget() -> None:
                self._thread_slots.pop(thread, None)

            unhook = on_stop(loop, ended)
        except BaseException:
            slot.unregister()
            raise
        return slot, both(forget, both(unhook, restore))

    def thread_slot(self) -> Optional[Slot]:
        """The slot of the loop the current thread runs, if it is an asyncio loop loopguard
        watches (see ``Runtime.own_wait``)."""
        return self._thread_slots.get(threading.get_ident())


adapter = AsyncioAdapter()


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
        epoll = selector._selector
        proxy = _native.EpollProxy(epoll, slot)
        selector._selector = proxy

        def restore_epoll() -> None:
            if selector._selector is proxy:
                selector._selector = epoll

        return restore_epoll
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
        proxied = _native.SelectorProxy(selector, slot)
        loop._selector = proxied

        def restore_proxy() -> None:
            if loop._selector is proxied:
                loop._selector = selector

        return restore_proxy
    return lambda: None


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
