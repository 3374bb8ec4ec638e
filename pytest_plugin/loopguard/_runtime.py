"""Process-wide runtime: the native watchdog, the loops it watches and the event log.

One watchdog serves every user in the process (the pytest plugin and any number of nested
``guard()`` blocks). Each user *acquires* the runtime with the threshold it needs; the watchdog
detects at the smallest of them and each user judges events against its own.

A loop is registered when it starts running while the runtime is acquired (``run_forever``,
``trio.run``). A ``guard()`` or ``offload_check()`` opened inside a loop that started earlier
*attaches* to it (:meth:`Runtime.attach`): the loop is registered from inside the running
callback and unregistered when the last of them leaves or the loop stops. How each kind of loop
is instrumented is its adapter's business (:mod:`loopguard._adapter`: asyncio, uvloop, trio).
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import importlib
import itertools
import os
import sys
import threading
from collections.abc import Callable, Hashable, Iterator
from typing import TYPE_CHECKING, Any, Optional

from . import _chain, _native
from ._decode import decode_events, remember_thread
from ._errors import LoopBlockedError
from ._explain import install_gc_log
from ._imports import PostImportFinder

if TYPE_CHECKING:
    from ._adapter import LoopAdapter
    from ._events import BlockEvent

__all__ = ["FLUSH_TIMEOUT", "LAG_PROBE_INTERVAL", "Runtime", "runtime"]

FLUSH_TIMEOUT = 5.0
"""Seconds :meth:`Runtime.collect` waits at most for the watchdog to finish the events it was
told of."""

_LATER = {
    "asyncio": "loopguard._asyncio",
    "uvloop": "loopguard._uvloop",
    "trio": "loopguard._trio",
}
"""The loop adapters, each imported and installed only once its library is (by the library's
name): a run that uses none of them loads none. asyncio too: a suite of sync tests that never
imports it does not get it from loopguard (54 modules; and three more loggers, which every
test then pays for: pytest sets the root logger's level around each phase, and each setting
clears every logger's cache)."""

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
        self._adapters: tuple[LoopAdapter, ...] = ()
        """Every kind of loop whose library is imported, in the order :meth:`attach` asks which
        one runs the code (uvloop's loops are asyncio's too: uvloop first)."""
        self._pending: dict[str, Optional[LoopAdapter]] = dict.fromkeys(_LATER)
        """The adapters to install once their library is imported, by the library's name,
        until they are; each is imported (None until then) with its library."""
        self.events: list[BlockEvent] = []
        """The event log: finished events nobody has taken yet. Read it anywhere (an empty log
        is the common case, checked at every test phase: a list, not a call); change it only
        through the methods below."""
        self._sampler: Optional[str] = None
        self._raisers: set[int] = set()
        self.lag_probing = False
        """Loops that start running from now on measure their lag (see
        :data:`LAG_PROBE_INTERVAL`). Read it anywhere (checked at every test: an attribute, not
        a call); set it with :meth:`probe_lag`."""
        self.lag_log: collections.deque[tuple[int, float]] = collections.deque(maxlen=100_000)
        """``(when_ns, lag_seconds)`` measured by the lag probes, on the watchdog's clock."""
        self.lag_listener: Optional[Callable[[str, Any], Optional[Callable[[float], None]]]] = None
        """Called on the loop's thread when a lag probe starts on a loop (its kind and the
        loop); the function it returns, if any, gets each lag measured on that loop
        (``python -m loopguard run``'s per-loop figures)."""
        self._attachments: dict[Hashable, _Attachment] = {}
        """Loops registered while running (see :meth:`attach`), by loop."""

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
                self.events.clear()
            self._apply()

    @property
    def active(self) -> bool:
        """True while somebody has acquired the runtime and not released it."""
        return bool(self._needs)

    @property
    def users(self) -> int:
        """How many have acquired the runtime and not released it."""
        return len(self._needs)

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

    def probe_lag(self, on: bool) -> None:
        """Measure loop lag (see :data:`LAG_PROBE_INTERVAL`) on loops that start running from
        now on, or stop."""
        if on != self.lag_probing:
            self.lag_probing = on
            self._set_run_mode()

    def shutdown(self) -> None:
        """Stop the watchdog (at exit, or when the last pytest session ends)."""
        with self._lock:
            self._needs.clear()
            self._set_run_mode()
            _native.stop()

    def _apply(self) -> None:
        self._set_run_mode()
        if self._needs and _native.is_running():
            _native.set_threshold(min(self._needs.values()))

    def _set_run_mode(self) -> None:
        """Tell the patched ``run_forever`` methods what a run does now (see
        ``_native.set_run_mode``): nothing while nobody wants loops watched; the common case
        natively, unless a lag probe must start at each run."""
        _native.set_run_mode(0 if not self._needs else 2 if self.lag_probing else 1)

    # --- events ----------------------------------------------------------------------------

    def set_context(self, context: str) -> None:
        """Blocks that begin from now on belong to ``context``. Never waits for the watchdog."""
        try:
            _native.set_context(context)
        except RuntimeError:
            pass  # the watchdog is not running

    def check_imports(self) -> None:
        """Instrument asyncio, uvloop and trio if they were imported in a way the import hook
        missed (called at the start of every test: cheap)."""
        for name in self._pending:
            if name in sys.modules:
                self._install_pending()
                return

    def collect(self, *, everything: bool = False) -> list[BlockEvent]:
        """Fetch finished events from the watchdog into the log; returns the new ones.

        Waits for the watchdog only while the end of a block has been reported to it and not
        handled yet, so this costs nothing when no block finished. ``everything``: also wait
        for the watchdog to close the blocks whose end it saw without a report (at the end of
        a session).
        """
        raw = _native.flush(FLUSH_TIMEOUT) if everything else _native.take(FLUSH_TIMEOUT)
        if raw is None:
            return []
        return self.add(raw)

    def add(self, raw: str) -> list[BlockEvent]:
        """Add the finished events ``raw`` (as ``_native.take`` returns them) to the log;
        returns them."""
        new = decode_events(raw)
        with self._lock:
            self.events.extend(new)
        return new

    def events_between(self, start_ns: int, end_ns: int) -> list[BlockEvent]:
        with self._lock:
            return [e for e in self.events if start_ns <= e.start_ns < end_ns]

    def events_inside(self, start_ns: int, end_ns: int, threshold: float) -> list[BlockEvent]:
        """The events of a stretch of code that ran from ``start_ns`` to ``end_ns`` (a guard, a
        check): those that began inside it, and those that began before it but went on inside
        it for at least ``threshold`` seconds. (A block on the loop that runs the code began
        when the loop last came back to it: before the code, when it opened the stretch in
        the same callback.)"""
        least = int(threshold * 1e9)
        with self._lock:
            return [
                e
                for e in self.events
                if start_ns <= e.start_ns < end_ns
                or (e.start_ns < start_ns and min(e.end_ns, end_ns) - start_ns >= least)
            ]

    def take_events(self, predicate) -> list[BlockEvent]:
        """Remove and return logged events matching ``predicate``."""
        with self._lock:
            taken = [e for e in self.events if predicate(e)]
            if taken:
                ids = {e.id for e in taken}
                self.events = [e for e in self.events if e.id not in ids]
            return taken

    def trim(self, keep_after_ns: int) -> None:
        """Forget events that began before ``keep_after_ns`` (nobody can still claim them)."""
        with self._lock:
            self.events = [e for e in self.events if e.start_ns >= keep_after_ns]

    # --- instrumentation -------------------------------------------------------------------

    def _install_pending(self) -> None:
        """Instrument asyncio, uvloop and trio once they are imported (checked at every phase:
        cheap)."""
        with self._lock:
            for name in list(self._pending):
                if name in sys.modules and self._adapter(name).install(self):
                    del self._pending[name]

    def _adapter(self, name: str) -> LoopAdapter:
        """The adapter of library ``name`` (a key of :data:`_LATER`), imported on first use and
        then asked, in its turn, which loop runs the code."""
        adapter = self._pending.get(name)
        if adapter is None:
            adapter = importlib.import_module(_LATER[name]).adapter
            self._pending[name] = adapter
            order = ("uvloop", "asyncio", "trio")
            self._adapters = tuple(
                sorted((*self._adapters, adapter), key=lambda a: order.index(a.kind))
            )
        return adapter

    def _after_import(self, name: str) -> Optional[Callable[[object], None]]:
        """For the import hook: instrument asyncio, uvloop or trio once its import finishes."""
        if name not in self._pending:
            return None
        return lambda module: self._install_pending()

    def _install(self) -> None:
        self._install_pending()
        if self._patched:
            return
        self._install_thread_names()
        if self._pending:
            # asyncio, uvloop and trio imported later (inside a guard(), in a test) are
            # instrumented as soon as their import finishes.
            sys.meta_path.insert(0, PostImportFinder(self._after_import))
        install_gc_log()
        _chain.install()
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

    def start_lag_probe(self, loop: Any, kind: str) -> Optional[_LagProbe]:
        """A lag probe on ``loop`` (asyncio or uvloop, about to run) when lag is measured."""
        if not self.lag_probing:
            return None
        listener = self.lag_listener
        return _LagProbe(loop, self.lag_log, listener(kind, loop) if listener else None)

    # --- attaching to a loop that is already running ---------------------------------------

    def attach(self) -> Optional[object]:
        """Watch the event loop (asyncio, uvloop or trio) running the current thread's code,
        when it started running before the watchdog was wanted (so nothing registered it):
        ``guard()`` and ``offload_check()`` opened inside a running loop call this. Returns a
        token for :meth:`detach` (call it on the loop's thread when the caller leaves), or None
        when there is nothing to attach (no running loop, or one already watched).

        The loop is registered from inside the callback running now: busy from now on, idle
        from its next wait. Nested callers share one attachment; the last to leave puts the
        loop back as it was and unregisters it (closing a block still in progress). So does
        the loop's stopping (``loop.stop()``, the end of a trio run), whoever is still in: a
        stopped loop must not look blocked, and a loop started again is registered as usual
        when the watchdog is wanted."""
        found = self._running_loop()
        if found is None:
            return None
        adapter, key, loop = found
        with self._lock:
            attachment = self._attachments.get(key)
            if attachment is not None:
                attachment.users += 1
                return attachment
            if not _native.is_running() or adapter.is_watched(loop):
                return None
            attachment = _Attachment(key)
            try:
                attachment.slot, attachment.restore = adapter.attach(
                    loop, lambda: self._end(attachment)
                )
            except RuntimeError:
                return None
            self._attachments[key] = attachment
            return attachment

    def _running_loop(self) -> Optional[tuple[LoopAdapter, Hashable, Any]]:
        """The loop running the current thread's code: ``(adapter, key, loop)``, or None."""
        for name, adapter in list(self._pending.items()):
            if adapter is None and name in sys.modules:
                with self._lock:
                    self._adapter(name)
        for adapter in self._adapters:
            found = adapter.running()
            if found is not None:
                return adapter, *found
        return None

    def detach(self, token: Optional[object]) -> None:
        """A caller of :meth:`attach` leaves (``token``: what it returned; None does
        nothing)."""
        if not isinstance(token, _Attachment):
            return
        with self._lock:
            if self._attachments.get(token.key) is not token:
                return  # ended already (the loop stopped)
            token.users -= 1
            if token.users > 0:
                return
        self._end(token)

    def _end(self, attachment: _Attachment) -> None:
        with self._lock:
            if self._attachments.get(attachment.key) is not attachment:
                return
            del self._attachments[attachment.key]
        try:
            attachment.restore()
        finally:
            attachment.slot.unregister()

    @contextlib.contextmanager
    def own_wait(self) -> Iterator[None]:
        """Around loopguard's own waits on a loop's thread (for its offload sampler to stop, for
        the watchdog to hand over events, when a ``guard()`` or ``offload_check()`` closes): the
        asyncio loop this thread runs, if any, is marked idle, so that a busy machine's delay in
        loopguard's threads is never counted as the loop's block. A block of the code before it
        ends where the wait begins."""
        asyncio_adapter = sys.modules.get("loopguard._asyncio")  # none before asyncio is
        slot = None if asyncio_adapter is None else asyncio_adapter.adapter.thread_slot()
        if slot is None:
            yield
            return
        slot.idle_for(None)  # no limit: the loop is not starved while loopguard waits
        try:
            yield
        finally:
            slot.busy()


class _Attachment:
    """A loop registered while it was running, and how many callers of ``attach`` use it."""

    def __init__(self, key: Hashable) -> None:
        self.key = key
        self.slot: Any = None
        self.restore: Callable[[], None] = lambda: None
        self.users = 1


class _LagProbe:
    """A timer every :data:`LAG_PROBE_INTERVAL` on ``loop``, logging how late it runs."""

    INTERVAL = LAG_PROBE_INTERVAL

    def __init__(self, loop, log, own=None) -> None:  # type: ignore[no-untyped-def]
        self._loop = loop
        self._log = log
        self._own = own
        self._due = loop.time() + self.INTERVAL
        self._handle = loop.call_at(self._due, self._tick)

    def _tick(self) -> None:
        now = self._loop.time()
        lag = max(0.0, now - self._due)
        self._log.append((_native.now_ns(), lag))
        if self._own is not None:
            self._own(lag)
        self._due = now + self.INTERVAL
        self._handle = self._loop.call_at(self._due, self._tick)

    def stop(self) -> None:
        self._handle.cancel()


runtime = Runtime()


def _at_exit() -> None:
    runtime.shutdown()


atexit.register(_at_exit)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_native.after_fork_child)
