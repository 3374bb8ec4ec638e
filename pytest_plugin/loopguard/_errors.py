"""loopguard's exceptions and its warning. This module imports nothing of loopguard's, so that
every other module can raise them."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    from ._events import BlockEvent

__all__ = [
    "RAISED_MESSAGE",
    "LoopBlockedError",
    "LoopBlockedWarning",
    "LoopguardInactiveWarning",
    "OffloadError",
    "SettingError",
]

RAISED_MESSAGE = (
    "loopguard: this code blocked the event loop for longer than the threshold "
    "(raised here by raise mode while the loop thread was still running it)"
)


class SettingError(ValueError):
    """An invalid setting value. The message names the setting, the value and its source."""


class LoopBlockedError(AssertionError):
    """An event loop was blocked for longer than the threshold.

    ``events`` lists the blocks (:class:`loopguard.BlockEvent`), in the order they began. In
    raise mode the error is raised inside the blocked code itself, without events (the block is
    still going on at that moment).
    """

    def __init__(self, events: Iterable[BlockEvent] = (), text: Optional[str] = None) -> None:
        self.events = list(events)
        if text is None:  # raise mode raises the bare class; guard() passes the report
            n = len(self.events)
            text = (
                f"loopguard: {n} block{'s' * (n != 1)} of the event loop" if n else RAISED_MESSAGE
            )
        super().__init__(text)


class LoopBlockedWarning(UserWarning):
    """Emitted instead of failing the test in ``--loopguard-mode=warn``.

    Filter it like any warning: ``-W error::loopguard.LoopBlockedWarning`` makes such blocks
    fail their tests again, ``filterwarnings = ignore::loopguard.LoopBlockedWarning`` hides them.
    """


class LoopguardInactiveWarning(UserWarning):
    """loopguard cannot watch event loops on this interpreter (free-threaded CPython): emitted
    once per process, by the first ``guard()``, ``offload_check()`` or ``expect_block()``, whose
    body then runs unwatched. The message says why.

    A suite that turns warnings into errors runs its free-threaded job with
    ``-W ignore::loopguard.LoopguardInactiveWarning`` (or that ``filterwarnings`` line).
    """


class OffloadError(AssertionError):
    """``assert_offloaded()`` failed: the loop blocked, or offloaded work held the GIL."""
