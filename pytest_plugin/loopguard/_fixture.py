"""The ``loopguard`` fixture: the current test's blocks, and ``expect_block()``."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Optional, Union

from . import _native
from ._events import BlockEvent
from ._offload import OffloadCheck
from ._parse import format_duration, parse_duration

__all__ = ["ExpectBlock", "LagStats", "LoopguardFixture", "lag_stats"]


@dataclass
class ExpectBlock:
    """A stretch of a test that must block the event loop for at least ``threshold``.

    Judged when the test phase ends (a block is only complete once its loop gets back to its
    selector, which cannot happen while the blocking code is still on the loop thread), by
    :meth:`loopguard._judge.Judge.judge_phase`: the blocks it expected never fail the test and
    are reported as allowed; the phase that opened it fails if it saw none.
    """

    threshold: float
    where: str
    start_ns: int = 0
    end_ns: Optional[int] = None
    events: list[BlockEvent] = field(default_factory=list)
    """The blocks seen inside, once the phase has ended."""

    def __enter__(self) -> ExpectBlock:
        self.start_ns = _native.now_ns()
        return self

    def __exit__(self, *exc: object) -> None:
        self.end_ns = _native.now_ns()

    async def __aenter__(self) -> ExpectBlock:
        return self.__enter__()

    async def __aexit__(self, *exc: object) -> None:
        self.__exit__()


@dataclass(frozen=True)
class LagStats:
    """Loop lag (seconds): how late the loop ran a timer every
    :data:`~loopguard._runtime.LAG_PROBE_INTERVAL`."""

    samples: int
    max: float
    p50: float
    p99: float

    def __str__(self) -> str:
        return (
            f"max {format_duration(self.max)}, p50 {format_duration(self.p50)}, "
            f"p99 {format_duration(self.p99)} over {self.samples} samples"
        )


def lag_stats(lags: list[float]) -> LagStats:
    if not lags:
        return LagStats(0, 0.0, 0.0, 0.0)
    ordered = sorted(lags)

    def rank(p: float) -> float:  # nearest rank
        return ordered[max(0, min(len(ordered) - 1, math.ceil(p * len(ordered)) - 1))]

    return LagStats(len(ordered), ordered[-1], rank(0.5), rank(0.99))


class LoopguardFixture:
    """What the ``loopguard`` fixture gives a test."""

    def __init__(
        self,
        nodeid: str,
        threshold: float,
        events: Callable[[], list[BlockEvent]],
        register: Callable[[ExpectBlock], None],
        lag: Callable[[], LagStats],
    ) -> None:
        self.nodeid = nodeid
        self.threshold = threshold
        """The failing threshold of this test, in seconds."""
        self._events = events
        self._register = register
        self._lag = lag

    @property
    def lag(self) -> LagStats:
        """Loop lag of this test so far (loops that started running once the fixture was set
        up): ``max``, ``p50``, ``p99``, ``samples``."""
        return self._lag()

    @property
    def events(self) -> list[BlockEvent]:
        """The blocks of this test so far (setup included), in the order they began.

        A block that is still going on (the caller is on the blocked loop) is not in it yet.
        """
        return self._events()

    def expect_block(self, threshold: Union[str, float, None] = None) -> ExpectBlock:
        """A context manager (``with`` or ``async with``) that fails the test unless the loop
        blocks inside it for at least ``threshold`` (default: the test's threshold)."""
        seconds = (
            self.threshold
            if threshold is None
            else parse_duration(threshold, name="threshold", source="loopguard.expect_block()")
        )
        expect = ExpectBlock(threshold=seconds, where=self.nodeid)
        self._register(expect)
        return expect

    def offload_check(
        self,
        threshold: Union[str, float, None] = None,
        *,
        min_busy: Union[str, float, None] = None,
    ) -> OffloadCheck:
        """A context manager (``with`` or ``async with``) recording each thread's busy time and
        GIL share inside it, and the loop's blocks (threshold: the test's by default); judge it
        with ``check.assert_offloaded(max_gil_share=0.5)``."""
        return OffloadCheck(
            self.threshold if threshold is None else threshold,
            min_busy=min_busy,
            source="loopguard.offload_check()",
        )

    def __repr__(self) -> str:
        return f"<loopguard fixture for {self.nodeid}>"
