"""What the runtime asks of a kind of event loop, and what a loop's adapter may ask of the runtime.

Each kind of loop loopguard watches has an adapter: :mod:`loopguard._asyncio` (stdlib asyncio,
its heartbeat at the selector), :mod:`loopguard._uvloop` (a periodic beat) and
:mod:`loopguard._trio` (trio's instrumentation hooks). The runtime (:mod:`loopguard._runtime`)
knows them only through :class:`LoopAdapter`: it installs each once its library is imported,
asks which loop runs the current thread's code, and attaches to a loop that started before it
was wanted. An adapter knows the runtime only through :class:`Host`.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any, Optional, Protocol

if TYPE_CHECKING:
    from ._native import Slot

__all__ = ["Host", "LoopAdapter", "Probe"]


class Probe(Protocol):
    """A lag probe running on a loop (see :meth:`Host.start_lag_probe`)."""

    def stop(self) -> None: ...


class Host(Protocol):
    """What an adapter may ask of the runtime."""

    @property
    def active(self) -> bool:
        """True while somebody wants the watchdog: a loop that starts running now is
        registered (checked at each start, so cheap)."""
        ...

    def start_lag_probe(self, loop: Any, kind: str) -> Optional[Probe]:
        """A lag probe on ``loop`` (of asyncio's API, about to run), when lag is measured."""
        ...


class LoopAdapter(Protocol):
    """One kind of event loop, as the runtime sees it."""

    kind: str
    """The kind the watchdog records for the loops it registers (``"asyncio"``, ``"uvloop"``,
    ``"trio"``): a block event's ``loop_kind``."""

    module: str
    """The module whose import makes this kind of loop possible: the adapter is imported and
    installed once it is (see ``_runtime._LATER``)."""

    def install(self, host: Host) -> bool:
        """Instrument the library, if it is imported, so that each loop that starts running
        while ``host`` is active registers and beats; True once done (and on later calls)."""
        ...

    def running(self) -> Optional[tuple[Hashable, Any]]:
        """The loop of this kind that runs the current thread's code, as ``(key, loop)``: a key
        that names it among every kind's loops, and the object :meth:`is_watched` and
        :meth:`attach` take. None when no loop of this kind runs it."""
        ...

    def is_watched(self, loop: Any) -> bool:
        """True when ``loop`` (from :meth:`running`) was registered when it started running."""
        ...

    def attach(self, loop: Any, ended: Callable[[], None]) -> tuple[Slot, Callable[[], None]]:
        """Register ``loop`` (from :meth:`running`, on its thread, inside the callback running
        now) and start its heartbeat: ``(slot, restore)``. ``ended`` is called on the loop's
        thread when the loop stops; ``restore`` puts the loop back as it was (the caller then
        unregisters the slot). Raises ``RuntimeError`` when the watchdog cannot take the loop,
        having registered nothing."""
        ...
