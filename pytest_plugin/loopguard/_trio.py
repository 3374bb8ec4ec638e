"""trio: watched through trio's own instrumentation hooks.

``trio.run`` and ``trio.lowlevel.start_guest_run`` (the public entry points that pytest-trio,
anyio's trio backend and ``anyio.run`` call) are wrapped to add one ``trio.abc.Instrument`` per
run. ``before_run`` registers the run on the thread that drives it, ``before_io_wait(timeout)``
marks it idle until ``timeout`` from now, ``after_io_wait`` busy again, ``after_run`` unregisters.
That is the stdlib-asyncio heartbeat exactly (busy = not waiting for I/O), at the cost of two
hook calls per trio scheduler iteration.

trio's wait cannot be shortened from an instrument (``Slot.idle`` caps asyncio's wait so that
a loop that does not come back in time is known to be starved). So a trio run counts as starved
only when it is late back from a wait that had a deadline: a run that waits for I/O with no
deadline and then cannot get the GIL is reported once it gets it, not while it waits. (Capping
the wait would mean replacing the run's clock, which ``trio.lowlevel.current_clock()`` exposes
and user clocks such as ``MockClock`` own.)

A guest run is never counted as starved (its host decides when it resumes, see
``before_io_wait``). A guest run hosted by a running asyncio loop in the same thread is not
registered: the host loop's own heartbeat covers it (registering both would report each block
twice). A guest run whose host thread exits before the run finishes is unregistered when the
thread exits.

A run that started before the runtime was wanted is attached from inside one of its tasks (see
:meth:`TrioAdapter.attach`), with an instrument of its own, and let go when the run ends.
"""

from __future__ import annotations

import functools
import sys
import threading
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any, Optional

from . import _native

if TYPE_CHECKING:
    from ._adapter import Host
    from ._native import Slot

__all__ = ["TrioAdapter", "adapter"]

_instrument_class: Optional[type] = None


class TrioAdapter:
    """The :class:`~loopguard._adapter.LoopAdapter` of trio's runs."""

    kind = "trio"
    module = "trio"

    def install(self, host: Host) -> bool:
        """Wrap ``trio.run`` and ``trio.lowlevel.start_guest_run`` if trio is imported."""
        trio = sys.modules.get("trio")
        lowlevel = getattr(trio, "lowlevel", None)
        if trio is None or lowlevel is None or not hasattr(trio, "run"):
            return False
        global _instrument_class
        if _instrument_class is None:
            _instrument_class = _make_instrument_class(trio)
        for module, name in ((trio, "run"), (lowlevel, "start_guest_run")):
            original = getattr(module, name, None)
            if original is not None and not getattr(original, "_loopguard", False):
                setattr(module, name, _wrap(host, original, guest=name == "start_guest_run"))
        return True

    def running(self) -> Optional[tuple[Hashable, Any]]:
        """The trio run of the current thread, unless an asyncio loop (of any kind) runs the
        thread's code: that loop is then the one to attach to, if any (a guest run's host)."""
        if _asyncio_loop_runs():
            return None
        key = _current_run()
        if key is None:
            return None
        return ("trio", key), None

    def is_watched(self, loop: Any) -> bool:
        """True when the trio run of the current thread was registered when it started."""
        return getattr(_watched, "runs", 0) > 0

    def attach(self, loop: Any, ended: Callable[[], None]) -> tuple[Slot, Callable[[], None]]:
        """Register the trio run of the current thread from inside one of its tasks, with an
        instrument that reports its waits and calls ``ended`` when the run ends."""
        return _attach(ended)


adapter = TrioAdapter()


def _wrap(host: Host, original: Any, *, guest: bool) -> Any:
    @functools.wraps(original)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not host.active or not _native.is_running():
            return original(*args, **kwargs)
        assert _instrument_class is not None
        instrument = _instrument_class(guest)
        kwargs["instruments"] = (*kwargs.get("instruments", ()), instrument)
        if guest:
            return original(*args, **kwargs)
        try:
            return original(*args, **kwargs)
        finally:
            instrument.after_run()

    wrapper._loopguard = True  # type: ignore[attr-defined]
    return wrapper


# How many watched trio runs the thread drives (0 or 1 but for guest runs).
_watched = threading.local()


def _asyncio_loop_runs() -> bool:
    """Whether an asyncio loop (of any kind) runs the current thread's code: none can before
    asyncio is imported (trio does not import it)."""
    asyncio = sys.modules.get("asyncio")
    return asyncio is not None and asyncio._get_running_loop() is not None


def _current_run() -> Optional[object]:
    """The trio run of the current thread (a key for it), or None outside one."""
    trio = sys.modules.get("trio")
    lowlevel = getattr(trio, "lowlevel", None)
    if lowlevel is None:
        return None
    try:
        return id(lowlevel.current_trio_token())
    except RuntimeError:
        return None


def _attach(ended: Callable[[], None]) -> tuple[Slot, Callable[[], None]]:
    """See :meth:`TrioAdapter.attach`: ``(slot, remove)``. Raises ``RuntimeError`` when the
    watchdog cannot take the run."""
    trio = sys.modules["trio"]
    slot = _native.register("trio", threading.current_thread().name, threading.get_ident(), None)

    class Attached(trio.abc.Instrument):  # type: ignore[misc, name-defined]
        before_io_wait = staticmethod(slot.idle_for)

        def after_io_wait(self, timeout: float) -> None:
            slot.busy()

        def after_run(self) -> None:
            ended()

    instrument = Attached()
    try:
        trio.lowlevel.add_instrument(instrument)
    except BaseException:
        slot.unregister()
        raise

    def remove() -> None:
        try:
            trio.lowlevel.remove_instrument(instrument)
        except (RuntimeError, KeyError):
            pass  # the run is over (or it was removed already)

    return slot, remove


# Slots of guest runs, per host thread: unregistered when the thread exits (its thread-local
# data is released on that thread, before its thread state is freed).
_thread_runs = threading.local()


class _ThreadRuns:
    def __init__(self) -> None:
        self.slots: set[Any] = set()

    def __del__(self) -> None:
        for slot in list(self.slots):
            slot.unregister()
        self.slots.clear()


def _track(slot: Any, add: bool) -> None:
    runs = getattr(_thread_runs, "runs", None)
    if runs is None:
        if not add:
            return
        runs = _thread_runs.runs = _ThreadRuns()
    if add:
        runs.slots.add(slot)
    else:
        runs.slots.discard(slot)


def _make_instrument_class(trio: Any) -> type:
    class LoopguardInstrument(trio.abc.Instrument):  # type: ignore[misc, name-defined]
        """Tells loopguard's watchdog when this trio run waits for I/O and when it runs."""

        def __init__(self, guest: bool) -> None:
            self._guest = guest
            self._slot: Any = None

        def before_run(self) -> None:
            if self._slot is not None:
                return
            if self._guest and _asyncio_loop_runs():
                return  # hosted by an asyncio loop, which loopguard already watches
            try:
                slot = _native.register(
                    "trio", threading.current_thread().name, threading.get_ident(), None
                )
            except RuntimeError:
                return
            self._slot = slot
            _watched.runs = getattr(_watched, "runs", 0) + 1
            if self._guest:
                _track(slot, True)
            else:
                # The hot hook goes straight to native code, with no Python frame in between.
                self.before_io_wait = slot.idle_for

        def before_io_wait(self, timeout: float) -> None:
            # A guest run resumes when its host drives it, which may be much later than
            # ``timeout`` without anything being blocked (anyio's test runner drives its trio
            # run only while a test or fixture runs): a guest is never counted as starved.
            slot = self._slot
            if slot is not None:
                slot.idle_for(None)

        def after_io_wait(self, timeout: float) -> None:
            slot = self._slot
            if slot is not None:
                slot.busy()

        def after_run(self) -> None:
            slot, self._slot = self._slot, None
            if slot is not None:
                slot.unregister()
                _watched.runs = max(0, getattr(_watched, "runs", 0) - 1)
                if self._guest:
                    _track(slot, False)

    return LoopguardInstrument
