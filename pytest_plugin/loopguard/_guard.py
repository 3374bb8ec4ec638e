"""``loopguard.guard()``: watch event loops for a block of code, without the pytest plugin."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Optional, TypeVar, Union

from . import _native
from ._events import BlockEvent, format_events
from ._judge import parse_allow
from ._runtime import runtime
from ._settings import CPU_WAIT_CHOICES, GC_CHOICES, parse_duration

__all__ = ["LoopBlockedError", "LoopBlockedWarning", "guard"]

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_THRESHOLD = 0.1


RAISED_MESSAGE = (
    "loopguard: this code blocked the event loop for longer than the threshold "
    "(raised here by raise mode while the loop thread was still running it)"
)
MODES = ("fail", "raise")


class LoopBlockedError(AssertionError):
    """An event loop was blocked for longer than the threshold.

    ``events`` lists the blocks (:class:`loopguard.BlockEvent`), in the order they began. In
    raise mode the error is raised inside the blocked code itself, without events (the block is
    still going on at that moment).
    """

    def __init__(self, events: Iterable[BlockEvent] = ()) -> None:
        self.events = list(events)
        super().__init__(format_events(self.events) if self.events else RAISED_MESSAGE)


class LoopBlockedWarning(UserWarning):
    """Emitted instead of failing the test in ``--loopguard-mode=warn``.

    Filter it like any warning: ``-W error::loopguard.LoopBlockedWarning`` makes such blocks
    fail their tests again, ``filterwarnings = ignore::loopguard.LoopBlockedWarning`` hides them.
    """


class guard:
    """Watch every asyncio event loop that runs inside the block.

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
    ) -> None:
        self.threshold = (
            DEFAULT_THRESHOLD
            if threshold is None
            else parse_duration(threshold, name="threshold", source="loopguard.guard()")
        )
        if mode not in MODES:
            raise ValueError(
                f"invalid value for mode: {mode!r} (from loopguard.guard()); "
                f"expected one of {', '.join(MODES)}"
            )
        self.mode = mode
        if gc not in GC_CHOICES:
            raise ValueError(
                f"invalid value for gc: {gc!r} (from loopguard.guard()); "
                f"expected one of {', '.join(GC_CHOICES)}"
            )
        self.gc = gc
        if cpu_wait not in CPU_WAIT_CHOICES:
            raise ValueError(
                f"invalid value for cpu_wait: {cpu_wait!r} (from loopguard.guard()); "
                f"expected one of {', '.join(CPU_WAIT_CHOICES)}"
            )
        self.cpu_wait = cpu_wait
        self.raise_ = raise_
        if isinstance(allow, str):
            allow = [allow]
        self.allow = tuple(parse_allow(p, source="loopguard.guard(allow=...)") for p in allow)
        self.events: list[BlockEvent] = []
        self.allowed: list[BlockEvent] = []
        self._stack: list[tuple[int, int]] = []

    def __enter__(self) -> guard:
        token = runtime.acquire(self.threshold)
        if self.mode == "raise":
            runtime.set_raise(token, True)
        self._stack.append((token, _native.now_ns()))
        return self

    def __exit__(self, exc_type, exc, tb) -> Optional[bool]:  # type: ignore[no-untyped-def]
        token, start = self._stack.pop()
        end = _native.now_ns()
        try:
            runtime.collect()
            seen = runtime.events_between(start, end)
        finally:
            runtime.release(token)
        interrupted = self.mode == "raise"
        over = [
            e
            for e in seen
            if e.crosses(self.threshold, self.gc, self.cpu_wait, interrupted=interrupted)
        ]
        self.allowed = [e for e in over if self._allowed(e)]
        self.events = [e for e in over if e not in self.allowed]
        if self.events and self.raise_ and exc_type is None:
            __tracebackhide__ = True
            raise LoopBlockedError(self.events)
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

    def _allowed(self, ev: BlockEvent) -> bool:
        root = Path.cwd()
        frames = [*ev.stack, *ev.gil_holder_stack]
        return any(p.matches(f, root) for p in self.allow for f in frames)

    def _copy(self) -> guard:
        g = guard.__new__(guard)
        g.threshold = self.threshold
        g.mode = self.mode
        g.raise_ = self.raise_
        g.allow = self.allow
        g.gc = self.gc
        g.cpu_wait = self.cpu_wait
        g.events = []
        g.allowed = []
        g._stack = []
        return g
