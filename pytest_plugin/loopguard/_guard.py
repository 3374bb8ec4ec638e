"""``loopguard.guard()``: watch event loops for a block of code, without the pytest plugin."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Iterable
from typing import Any, Callable, Optional, TypeVar, Union

from . import _native
from ._events import BlockEvent, format_events
from ._runtime import runtime
from ._settings import parse_duration

__all__ = ["LoopBlockedError", "guard"]

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


class guard:
    """Watch every asyncio event loop that runs inside the block.

    On exit, raises :class:`LoopBlockedError` if any loop was blocked for longer than
    ``threshold`` (``"100ms"``, ``"0.25s"``, ``0.1``). Usable as a context manager or a
    decorator (sync or async functions), nested and repeated; works without the plugin.
    After the block, :attr:`events` holds what was seen. ``mode="raise"`` also raises
    :class:`LoopBlockedError` inside the blocked code, at the line that blocks (see the README
    for its limits).
    """

    def __init__(
        self,
        threshold: Union[str, float, None] = None,
        *,
        mode: str = "fail",
        raise_: bool = True,
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
        self.raise_ = raise_
        self.events: list[BlockEvent] = []
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
        self.events = [e for e in seen if e.duration >= self.threshold]
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

    def _copy(self) -> guard:
        g = guard.__new__(guard)
        g.threshold = self.threshold
        g.mode = self.mode
        g.raise_ = self.raise_
        g.events = []
        g._stack = []
        return g
