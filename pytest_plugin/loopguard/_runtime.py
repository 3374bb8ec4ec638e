"""Process-wide runtime: the native watchdog, loop instrumentation and the event log.

One watchdog serves every user in the process (the pytest plugin and any number of nested
``guard()`` blocks). Each user *acquires* the runtime with the threshold it needs; the watchdog
detects at the smallest of them and each user judges events against its own.
"""

from __future__ import annotations

import asyncio
import asyncio.base_events
import atexit
import collections
import importlib.abc
import importlib.util
import itertools
import os
import select
import selectors
import sys
import threading
from typing import Optional

from . import _native, _trio, _uvloop
from ._decode import decode_events, remember_thread
from ._errors import LoopBlockedError
from ._events import BlockEvent
from ._explain import install_gc_log

__all__ = ["LAG_PROBE_INTERVAL", "Runtime", "runtime"]

_FLUSH_TIMEOUT = 5.0

LAG_PROBE_INTERVAL = 0.01
"""Seconds between the lag probe's timers: how late they run is the loop's lag (measured only
on request: the ``loopguard`` fixture or ``max_lag=``)."""


def _remember_native_id(thread: threading.Thread) -> None:
    # A started thread's native_id is set by the time start() returns.
    if sys.version_info < (3, 11) and thread.ident is not None and thread.native_id:
        _native.remember_native_id(thread.ident, thread.native_id)


class Runtime:
    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._needs: dict[int, int] = {}
        self._tokens = itertools.count(1)
        self._patched = False
        self._optional = {"uvloop": _uvloop.install, "trio": _trio.install}
        self._events: list[BlockEvent] = []
        self._sampler: Optional[str] = None
        self._raisers: set[int] = set()
        self.lag_probing = False
        """Measure loop lag (see :data:`LAG_PROBE_INTERVAL`) on loops that start running from now
        on."""
        self.lag_log: collections.deque[tuple[int, float]] = collections.deque(maxlen=100_000)
        """``(when_ns, lag_seconds)`` measured by the lag probes, on the watchdog's clock."""

    # --- lifetime --------------------------------------------------------------------------

    def acquire(self, threshold: float, sampler: str) -> int:
        """Start watching with ``threshold`` seconds; returns a token for :meth:`release`.

        ``sampler`` is how stacks are read when this call starts the watchdog (the caller's
        resolved setting: see :mod:`loopguard._settings`). Raises ``RuntimeError`` when the
        watchdog cannot start.
        """
        ns = max(1, int(threshold * 1e9))
        with self._lock:
            if not _native.is_running():
                self._sampler = _native.start(ns, sampler)
            self._install()
            token = next(self._tokens)
            self._needs[token] = ns
            self._apply()
            return token

    def update(self, token: int, threshold: float) -> None:
        ns = max(1, int(threshold * 1e9))
        if self._needs.get(token) == ns:
            return  # the common case, at every test: nothing changes
        with self._lock:
            if token in self._needs and self._needs[token] != ns:
                self._needs[token] = ns
                self._apply()

    def set_raise(self, token: int, on: bool) -> None:
        """Raise mode for ``token``: blocks raise ``LoopBlockedError`` in the loop thread."""
        if not on and not self._raisers:
            return  # the common case, at every test: nobody raises
        with self._lock:
            if on:
                self._raisers.add(token)
            else:
                self._raisers.discard(token)
            if not _native.is_running():
                return
            if self._raisers:
                _native.enable_raise(LoopBlockedError)
            else:
                _native.disable_raise()

    def release(self, token: int) -> None:
        with self._lock:
            if token in self._raisers:
                self.set_raise(token, False)
            self._needs.pop(token, None)
            if not self._needs:
                self._events.clear()
            self._apply()

    @property
    def active(self) -> bool:
        return bool(self._needs)

    @property
    def sampler(self) -> Optional[str]:
        return _native.sampler_name()

    @property
    def cpu_wait_known(self) -> bool:
        """True when the kernel reports how long a thread waited for a CPU (the second field
        of ``/proc/self/task/TID/schedstat``, which the watchdog reads around each block)."""
        try:
            with open(f"/proc/self/task/{threading.get_native_id()}/schedstat") as f:
                return len(f.read().split()) == 3
        except OSError:
            return False

    def shutdown(self) -> None:
        """Stop the watchdog (at exit, or when the last pytest session ends)."""
        with self._lock:
            self._needs.clear()
            _native.stop()

    def _apply(self) -> None:
        if self._needs and _native.is_running():
            _native.set_threshold(min(self._needs.values()))

    # --- events ----------------------------------------------------------------------------

    def set_context(self, context: str) -> None:
        """Blocks that begin from now on belong to ``context``. Never waits for the watchdog."""
        try:
            _native.set_context(context)
        except RuntimeError:
            pass  # the watchdog is not running

    def check_imports(self) -> None:
        """Instrument uvloop and trio if they were imported in a way the import hook missed
        (called at the start of every test: cheap)."""
        for name in self._optional:
            if name in sys.modules:
                self._install_optional()
                return

    def collect(self, *, everything: bool = False) -> list[BlockEvent]:
        """Fetch finished events from the watchdog into the log; returns the new ones.

        Waits for the watchdog only while the end of a block has been reported to it and not
        handled yet, so this costs nothing when no block finished. ``everything``: also wait
        for the watchdog to close the blocks whose end it saw without a report (at the end of
        a session).
        """
        raw = _native.flush(_FLUSH_TIMEOUT) if everything else _native.take(_FLUSH_TIMEOUT)
        if raw is None:
            return []
        new = decode_events(raw)
        with self._lock:
            self._events.extend(new)
        return new

    @property
    def has_events(self) -> bool:
        """True when the log holds events nobody has taken."""
        return bool(self._events)

    def events_between(self, start_ns: int, end_ns: int) -> list[BlockEvent]:
        with self._lock:
            return [e for e in self._events if start_ns <= e.start_ns < end_ns]

    def take_events(self, predicate) -> list[BlockEvent]:
        """Remove and return logged events matching ``predicate``."""
        with self._lock:
            taken = [e for e in self._events if predicate(e)]
            if taken:
                ids = {e.id for e in taken}
                self._events = [e for e in self._events if e.id not in ids]
            return taken

    def trim(self, keep_after_ns: int) -> None:
        """Forget events that began before ``keep_after_ns`` (nobody can still claim them)."""
        with self._lock:
            self._events = [e for e in self._events if e.start_ns >= keep_after_ns]

    # --- instrumentation -------------------------------------------------------------------

    def _install_optional(self) -> None:
        """Instrument uvloop and trio once they are imported (checked at every phase: cheap)."""
        with self._lock:
            for name, install in list(self._optional.items()):
                if name in sys.modules and install(self):
                    del self._optional[name]

    def _install(self) -> None:
        self._install_optional()
        if self._patched:
            return
        self._install_thread_names()
        if self._optional:
            # uvloop and trio imported later (inside a guard(), in a test) are instrumented as
            # soon as their import finishes.
            sys.meta_path.insert(0, _PostImportFinder(self))
        install_gc_log()
        cls = asyncio.base_events.BaseEventLoop
        original = cls.run_forever
        rt = self

        def run_forever(self):  # type: ignore[no-untyped-def]
            if not rt._needs or self.is_running() or not _native.is_running():
                return original(self)
            return rt._run_guarded(self, original)

        run_forever.__wrapped__ = original  # type: ignore[attr-defined]
        run_forever.__doc__ = original.__doc__
        run_forever.__qualname__ = original.__qualname__
        run_forever._loopguard = True  # type: ignore[attr-defined]
        cls.run_forever = run_forever  # type: ignore[method-assign]
        self._patched = True

    @staticmethod
    def _install_thread_names() -> None:
        """Remember the names of threads started from now on (see ``remember_thread``) and,
        before 3.11 (whose thread states do not record it), their kernel thread ids: the
        watchdog reads a GIL holder's wait for a CPU by that id."""
        for t in threading.enumerate():
            if t.ident is not None:
                remember_thread(t.ident, t.name)
                _remember_native_id(t)
        original_start = threading.Thread.start

        def start(self):  # type: ignore[no-untyped-def]
            original_start(self)
            if self.ident is not None:
                remember_thread(self.ident, self.name)
                _remember_native_id(self)

        start.__wrapped__ = original_start  # type: ignore[attr-defined]
        start.__doc__ = original_start.__doc__
        threading.Thread.start = start  # type: ignore[method-assign]

    def _run_guarded(self, loop, original):  # type: ignore[no-untyped-def]
        try:
            slot = _native.register(
                "asyncio", threading.current_thread().name, threading.get_ident(), loop
            )
        except RuntimeError:
            return original(loop)
        selector = getattr(loop, "_selector", None)
        base = type(selector)
        swapped = proxied = epoll = None
        if isinstance(selector, _EPOLL_SELECTOR) and isinstance(
            getattr(selector, "_selector", None), _EPOLL
        ):
            # The common case on Linux: wrap the epoll object (see _native.EpollProxy).
            epoll = selector._selector
            selector._selector = _native.EpollProxy(epoll, slot)
        elif isinstance(selector, selectors.BaseSelector) and "_loopguard_base" not in vars(base):
            # Give this selector a subclass whose select() beats; Python-to-Python calls stay
            # cheap, which matters: this runs once per loop iteration.
            try:
                selector._loopguard_slot = slot
                selector.__class__ = _guarded_class(base)
                swapped = selector
            except (TypeError, AttributeError):
                swapped = None
        if epoll is None and swapped is None and hasattr(selector, "select"):
            proxied = _native.SelectorProxy(selector, slot)
            loop._selector = proxied
        probe = _LagProbe(loop, self.lag_log) if self.lag_probing else None
        try:
            return original(loop)
        finally:
            if probe is not None:
                probe.stop()
            if epoll is not None:
                selector._selector = epoll
            if swapped is not None:
                swapped.__class__ = base
                del swapped._loopguard_slot
            if proxied is not None and loop._selector is proxied:
                loop._selector = selector
            slot.unregister()


class _PostImportFinder(importlib.abc.MetaPathFinder):
    """Finds nothing itself: when uvloop or trio is imported, wraps its loader so that
    loopguard instruments it right after the module has run."""

    def __init__(self, rt: Runtime) -> None:
        self._rt = rt
        self._finding = threading.local()

    def find_spec(self, fullname, path=None, target=None):  # type: ignore[no-untyped-def]
        if fullname not in self._rt._optional or getattr(self._finding, "name", None):
            return None
        self._finding.name = fullname
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            self._finding.name = None
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return None
        spec.loader = _InstallingLoader(spec.loader, self._rt._install_optional)
        return spec


class _InstallingLoader(importlib.abc.Loader):
    def __init__(self, inner, after) -> None:  # type: ignore[no-untyped-def]
        self._inner = inner
        self._after = after

    def create_module(self, spec):  # type: ignore[no-untyped-def]
        return self._inner.create_module(spec)

    def exec_module(self, module) -> None:  # type: ignore[no-untyped-def]
        self._inner.exec_module(module)
        self._after()

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        return getattr(self._inner, name)


class _LagProbe:
    """A timer every :data:`LAG_PROBE_INTERVAL` on ``loop``, logging how late it runs."""

    INTERVAL = LAG_PROBE_INTERVAL

    def __init__(self, loop, log) -> None:  # type: ignore[no-untyped-def]
        self._loop = loop
        self._log = log
        self._due = loop.time() + self.INTERVAL
        self._handle = loop.call_at(self._due, self._tick)

    def _tick(self) -> None:
        now = self._loop.time()
        self._log.append((_native.now_ns(), max(0.0, now - self._due)))
        self._due = now + self.INTERVAL
        self._handle = self._loop.call_at(self._due, self._tick)

    def stop(self) -> None:
        self._handle.cancel()


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


runtime = Runtime()


def _at_exit() -> None:
    runtime.shutdown()


atexit.register(_at_exit)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_native.after_fork_child)
