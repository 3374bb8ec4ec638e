"""``loopguard.guard()``: watch event loops for a block of code, without the pytest plugin."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Optional, TypeVar, Union

from . import _native
from ._errors import LoopBlockedError
from ._events import BlockEvent
from ._failure import format_events
from ._judge import Judge
from ._parse import (
    CPU_WAIT_CHOICES,
    DEFAULT_THRESHOLD,
    GC_CHOICES,
    NATIVE_CHOICES,
    environment_sampler,
    parse_allow_list,
    parse_choice,
    parse_duration,
)
from ._runtime import runtime

__all__ = ["guard"]

F = TypeVar("F", bound=Callable[..., Any])

MODES = ("fail", "raise")
"""The modes ``guard()`` takes: it raises on exit in both."""
_SOURCE = "loopguard.guard()"


class guard:
    """Watch every asyncio event loop that runs inside the block, and the loop (asyncio,
    uvloop or trio) the block itself runs in, even if it started running before.

    On exit, raises :class:`LoopBlockedError` if any loop was blocked for longer than
    ``threshold`` (``"100ms"``, ``"0.25s"``, ``0.1``). Usable as a context manager or a
    decorator (sync or async functions), nested and repeated; works without the plugin.
    After the block, :attr:`events` holds what was seen. ``mode="raise"`` also raises
    :class:`LoopBlockedError` inside the blocked code, at the line that blocks (see the README
    for its limits). ``allow`` lists call sites that may block
    (``"mypkg.startup:load_model"``, ``"app/config.py"``, ``"app/*.py:read_*"``; paths
    relative to the current directory); :attr:`allowed` holds the blocks they let through.
    ``gc="exclude"`` (the default) ignores a block that crossed the threshold only because a
    garbage collection ran during it; ``gc="include"`` judges blocks by their whole length.
    ``cpu_wait="exclude"`` (the default) likewise ignores a block that crossed it only because
    the loop thread waited for a CPU (a busy machine); blocks made of several callbacks of one
    loop iteration, none of which reached the threshold, are ignored too.
    ``native="on"`` also takes the native frames below the Python frame that made a C call
    (``native_stack`` on each event; Linux only), ``native="off"`` leaves them out; by default
    the block keeps what is set around it (the plugin's ``--loopguard-native``).
    """

    def __init__(
        self,
        threshold: Union[str, float, None] = None,
        *,
        mode: str = "fail",
        raise_: bool = True,
        allow: Iterable[str] = (),
        gc: str = "exclude",
        cpu_wait: str = "exclude",
        native: Optional[str] = None,
    ) -> None:
        self.threshold = (
            DEFAULT_THRESHOLD
            if threshold is None
            else parse_duration(threshold, name="threshold", source=_SOURCE)
        )
        self.mode = parse_choice(mode, MODES, name="mode", source=_SOURCE)
        self.gc = parse_choice(gc, GC_CHOICES, name="gc", source=_SOURCE)
        self.cpu_wait = parse_choice(cpu_wait, CPU_WAIT_CHOICES, name="cpu_wait", source=_SOURCE)
        self.native = (
            None
            if native is None
            else parse_choice(native, NATIVE_CHOICES, name="native", source=_SOURCE)
        )
        self.raise_ = raise_
        self.allow = parse_allow_list(
            allow if isinstance(allow, str) else tuple(allow), source="loopguard.guard(allow=...)"
        )
        self.events: list[BlockEvent] = []
        self.allowed: list[BlockEvent] = []
        self._stack: list[tuple[int, int, bool, Optional[object]]] = []

    def __enter__(self) -> guard:
        token = runtime.acquire(self.threshold, environment_sampler())
        if self.mode == "raise":
            runtime.set_raise(token, True)
        native_before = _native.native_stacks()
        if self.native is not None:
            _native.set_native_stacks(self.native == "on")
        start = _native.now_ns()
        # The loop running this code (if any) is watched from now on, even if it started
        # running before anything watched loops.
        self._stack.append((token, start, native_before, runtime.attach()))
        return self

    def __exit__(self, exc_type, exc, tb) -> Optional[bool]:  # type: ignore[no-untyped-def]
        token, start, native_before, attached = self._stack.pop()
        end = _native.now_ns()
        try:
            with runtime.own_wait():
                # Leaving the loop this guard attached closes a block still in progress on it.
                runtime.detach(attached)
                runtime.collect()
            seen = runtime.events_inside(start, end, self.threshold)
        finally:
            _native.set_native_stacks(native_before)
            runtime.release(token)
        # Judged as the plugin judges a test's blocks (allow paths relative to the current
        # directory); each event's threshold is this guard's.
        judge = Judge(Path.cwd(), allow=self.allow, gc=self.gc, cpu_wait=self.cpu_wait)
        verdicts = [
            judge.judge(e, test="", phase="", threshold=self.threshold, mode=self.mode)
            for e in seen
        ]
        self.allowed = [v.event for v in verdicts if v.outcome == "allowed"]
        self.events = [v.event for v in verdicts if v.outcome == "failed"]
        if self.events and self.raise_ and exc_type is None:
            __tracebackhide__ = True
            raise LoopBlockedError(self.events, format_events(self.events))
        return None

    def __call__(self, func: F) -> F:
        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                __tracebackhide__ = True
                with self._copy():
                    return await func(*args, **kwargs)

            return async_wrapper  # type: ignore[return-value]

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            __tracebackhide__ = True
            with self._copy():
                return func(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    def _copy(self) -> guard:
        cls = type(self)  # the inactive stand-in's copies are stand-ins too
        g = cls.__new__(cls)
        g.threshold = self.threshold
        g.mode = self.mode
        g.raise_ = self.raise_
        g.allow = self.allow
        g.gc = self.gc
        g.cpu_wait = self.cpu_wait
        g.native = self.native
        g.events = []
        g.allowed = []
        g._stack = []
        return g
