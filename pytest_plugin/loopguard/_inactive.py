"""loopguard where it cannot watch (see :mod:`loopguard._interpreter`): the public entry points
that would start the watchdog, as stand-ins that take the same arguments (and refuse the same
bad values), warn once per process (:class:`loopguard.LoopguardInactiveWarning`) and run their
body unwatched. The package exports these instead of the real ones; the plugin says in its
report header that it is inactive and why, and its fixture is the one below.
"""

from __future__ import annotations

from typing import Optional, Union

from . import _fixture, _guard, _offload
from ._fixture import lag_stats
from ._interpreter import INACTIVE, warn_inactive
from ._parse import format_duration

__all__ = ["ExpectBlock", "LoopguardFixture", "OffloadCheck", "guard", "header", "offload_check"]


def header() -> str:
    """The report header's line (and the session's last line) of an inactive plugin."""
    return f"loopguard: inactive, no event loop is watched: {INACTIVE}"


class guard(_guard.guard):
    __doc__ = _guard.guard.__doc__

    def __enter__(self) -> guard:
        warn_inactive("loopguard.guard()")
        return self

    def __exit__(self, exc_type, exc, tb) -> Optional[bool]:  # type: ignore[no-untyped-def]
        return None


class OffloadCheck(_offload.OffloadCheck):
    __doc__ = _offload.OffloadCheck.__doc__

    def __enter__(self) -> OffloadCheck:
        if self._state != "new":
            return super().__enter__()  # refuses a check used twice
        warn_inactive("loopguard.offload_check()")
        self._state = "open"
        return self

    def __exit__(self, *exc: object) -> None:
        if self._state == "open":
            self._state = "closed"  # no thread, no block: assert_offloaded() passes


def offload_check(
    threshold: Union[str, float, None] = None, *, min_busy: Union[str, float, None] = None
) -> OffloadCheck:
    return OffloadCheck(threshold, min_busy=min_busy)


offload_check.__doc__ = _offload.offload_check.__doc__


class ExpectBlock(_fixture.ExpectBlock):
    def __enter__(self) -> ExpectBlock:
        warn_inactive("loopguard.expect_block()")
        return self

    def __exit__(self, *exc: object) -> None:
        return None


class LoopguardFixture(_fixture.LoopguardFixture):
    """The ``loopguard`` fixture of an inactive plugin: no block, no lag, and
    ``expect_block()`` / ``offload_check()`` that run their body unwatched."""

    def __init__(self, nodeid: str, threshold: float) -> None:
        super().__init__(nodeid, threshold, list, lambda expect: None, lambda: lag_stats([]))

    def expect_block(self, threshold: Union[str, float, None] = None) -> ExpectBlock:
        checked = super().expect_block(threshold)  # the same argument, the same errors
        return ExpectBlock(threshold=checked.threshold, where=checked.where)

    def offload_check(
        self,
        threshold: Union[str, float, None] = None,
        *,
        min_busy: Union[str, float, None] = None,
    ) -> OffloadCheck:
        return OffloadCheck(
            self.threshold if threshold is None else threshold,
            min_busy=min_busy,
            source="loopguard.offload_check()",
        )

    def __repr__(self) -> str:
        return (
            f"<inactive loopguard fixture for {self.nodeid} "
            f"(threshold {format_duration(self.threshold)})>"
        )
