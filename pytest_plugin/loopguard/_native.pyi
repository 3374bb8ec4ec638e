"""The native core of loopguard (Rust, pyo3): the watchdog, the loop hooks and the GIL-free
stack reader. Private: the public API is :mod:`loopguard`. Checked against the built module by
``script/lint`` (``mypy.stubtest``)."""

from collections.abc import Callable
from types import CodeType
from typing import Any, Optional, final

__all__ = [
    "EpollProxy",
    "OffloadSampler",
    "RunForever",
    "SelectorProxy",
    "Slot",
    "_gil_reader_info",
    "_gil_sample",
    "_gil_sampler_line",
    "_gil_state",
    "_gil_state_raw",
    "_gil_thread_ids",
    "_gil_threads",
    "_native_interrupted_calls",
    "_native_stack_of",
    "_reader_code",
    "_reader_current_tstate",
    "_reader_layout",
    "_reader_line_for",
    "_reader_lines",
    "_reader_lines_for",
    "_reader_sample",
    "_reader_stack",
    "_reader_stress",
    "_waited_describe",
    "advance",
    "after_fork_child",
    "assistant_ident",
    "begin_test",
    "disable_raise",
    "enable_raise",
    "flush",
    "is_running",
    "native_stacks",
    "now_ns",
    "parked_loops",
    "portable",
    "reader_unavailable",
    "register",
    "registered_loops",
    "remember_native_id",
    "running_callee",
    "sampler_name",
    "set_context",
    "set_native_stacks",
    "set_phase",
    "set_run_mode",
    "set_task_reader",
    "set_threshold",
    "start",
    "stop",
    "take",
    "threshold",
]

# --- the watchdog -----------------------------------------------------------------------------

def start(threshold_ns: int, sampler: str) -> str:
    """Start the watchdog (``sampler``: "auto", "native" or "gil"); the sampler in use."""

def stop() -> None: ...
def after_fork_child() -> None: ...
def is_running() -> bool: ...
def sampler_name() -> Optional[str]: ...
def reader_unavailable() -> Optional[str]:
    """Why the GIL-free stack reader cannot be used here, or None."""

def portable() -> Optional[str]:
    """Why the Linux-only parts are not in this build (off Linux, or the ``portable`` feature;
    ``EpollProxy`` is then absent too), or None."""

def set_threshold(ns: int) -> None: ...
def threshold() -> int: ...
def set_context(context: str) -> None: ...
def begin_test(nodeid: str, native_stacks: bool) -> int:
    """Test ``nodeid`` begins (its setup is the context from now on), its blocks' samples read
    native frames when ``native_stacks``; the watchdog clock's time."""

def set_phase(phase: int) -> None:
    """Phase ``phase`` (0 none, 1 setup, 2 call, 3 teardown) of the test begun last is the
    context from now on."""

def advance(phase: int, timeout_s: float) -> Optional[str]:
    """The finished block events as for :func:`take`, the context unchanged; when there are
    none, None, and phase ``phase`` (as for :func:`set_phase`) is the context from now on."""

def flush(timeout_s: float) -> str:
    """Waits for the watchdog to handle everything sent so far; the finished block events as a
    JSON array."""

def take(timeout_s: float) -> Optional[str]:
    """The finished block events as a JSON array, or None when there are none; waits only while
    the end of a block is on its way to the watchdog."""

def registered_loops() -> int:
    """How many loops are registered now, those parked between two runs left out."""

def parked_loops() -> int:
    """How many registered loops are parked between two runs (until closed, freed or run
    again)."""

def remember_native_id(ident: int, native_id: int) -> None:
    """Before 3.11: that the Python thread ``ident`` is the kernel thread ``native_id``."""

def now_ns() -> int: ...
def set_native_stacks(on: bool) -> None:
    """Native frames on or off for blocks detected from now on."""

def native_stacks() -> bool: ...
def enable_raise(exc_class: type[BaseException]) -> None: ...
def disable_raise() -> None: ...
def assistant_ident() -> Optional[int]:
    """``threading.get_ident()`` of loopguard's assistant thread (the one that takes the GIL
    to name a blocked loop's task), or None when it does not run."""

# --- loop hooks -------------------------------------------------------------------------------

@final
class Slot:
    """A registered loop: its thread reports busy/idle here."""

    @property
    def id(self) -> int: ...
    def busy(self) -> None: ...
    def idle(self, timeout: Optional[float]) -> float: ...
    def idle_for(self, timeout: Optional[float]) -> None: ...
    def beat(self) -> float: ...
    def unregister(self) -> None: ...

def set_run_mode(mode: int) -> None:
    """What every ``RunForever`` does from now on: 0, run the original alone; 1, watch the
    loop, natively where it can; 2, watch it through ``enter`` and ``leave``."""

def register(
    kind: str, thread_name: str, thread_ident: int, loop_obj: Optional[object] = None
) -> Slot: ...
def set_task_reader(
    reader: Optional[Callable[[Any, int], Optional[tuple[str, list[tuple[str, int, str]]]]]],
) -> None:
    """The function that describes a blocked loop's running task (name and await chain),
    called on loopguard's assistant thread with the GIL held; None removes it."""

def running_callee(
    slots: int,
    count: int,
    caller: int,
    exclude: int,
    types: list[int],
    layout: tuple[int, bool, int, int, int],
) -> Optional[Any]:
    """The coroutine or generator that the frame at ``caller`` runs, found among the ``count``
    words at ``slots`` and checked (alive, of one of ``types``, executing, called by that
    frame) with the GIL held throughout; None when none is, or memory cannot be read.
    ``layout``: ``(frame_at, frame_is_pointer, state_at, caller_at, executing)``."""

@final
class RunForever:
    """A loop class's ``run_forever``, native so that no Python frame stays under the loop's
    callbacks. Following :func:`set_run_mode`: the original alone; or the common case
    (``fast``: ``(kind, watched, thread_slots, EpollSelector, epoll)``) watched natively; or
    ``enter(loop)`` (a token; None: not watched), ``original(loop)``, ``leave(token)``,
    however the original left. A method descriptor (bound to a loop, a
    ``types.MethodType``); instances have a ``__dict__``."""

    def __new__(
        cls,
        original: Callable[..., Any],
        enter: Callable[[Any], Any],
        leave: Callable[[Any], object],
        fast: Optional[tuple[str, set[int], dict[int, Slot], Any, Any]] = None,
    ) -> RunForever: ...
    def __get__(self, obj: Any, owner: Any = None, /) -> Any: ...
    def __call__(self, loop_obj: Any, *args: Any) -> Any: ...

@final
class EpollProxy:
    """A ``select.epoll`` whose ``poll`` marks the loop idle while it waits."""

    def __new__(cls, inner: Any, slot: Slot) -> EpollProxy: ...
    @property
    def inner(self) -> Any: ...
    @property
    def closed(self) -> bool: ...
    def poll(
        self, timeout: Optional[float] = None, maxevents: int = ...
    ) -> list[tuple[int, int]]: ...
    def register(self, fd: Any, eventmask: Optional[int] = None) -> None: ...
    def modify(self, fd: Any, eventmask: int) -> None: ...
    def unregister(self, fd: Any) -> None: ...
    def fileno(self) -> int: ...
    def close(self) -> None: ...

@final
class SelectorProxy:
    """A selector whose ``select`` marks the loop idle while it waits."""

    def __new__(cls, inner: Any, slot: Slot) -> SelectorProxy: ...
    @property
    def inner(self) -> Any: ...
    def select(self, timeout: Optional[float] = None) -> list[Any]: ...

# --- offload checks ---------------------------------------------------------------------------

@final
class OffloadSampler:
    """Samples who holds the GIL and what every Python thread runs, from a native thread,
    until :meth:`finish`."""

    def __new__(cls, interval: float = 0.001, threads_every: int = 5) -> OffloadSampler: ...
    def finish(self) -> dict[str, Any]: ...

# --- debug entry points of the readers, for the tests -------------------------------------------

def _reader_current_tstate() -> int: ...
def _reader_layout() -> tuple[str, tuple[int, int]]: ...
def _reader_code(code: CodeType) -> tuple[str, str, int, int]: ...
def _reader_lines(code: CodeType) -> list[tuple[int, int, Optional[int]]]: ...
def _reader_line_for(code: CodeType, offset: int) -> Optional[int]: ...
def _reader_lines_for(code: CodeType, offsets: list[int]) -> list[Optional[int]]: ...
def _reader_stack(tstate: int, thread_ident: int = 0) -> list[tuple[str, int, str]]: ...
def _reader_sample(tstate: int, thread_ident: int, delay: float = 0.0) -> str: ...
def _reader_stress(
    tstate: int, thread_ident: int, seconds: float, pause_us: int = 0
) -> dict[str, Any]: ...
def _gil_state(release: bool = True, delay: float = 0.0) -> tuple[bool, Optional[int]]: ...
def _gil_state_raw(release: bool = True) -> tuple[bool, int]: ...
def _gil_sample(
    seconds: float, interval: float = 0.001
) -> list[tuple[int, bool, Optional[int]]]: ...
def _gil_threads() -> list[tuple[int, int, Optional[int]]]: ...
def _gil_thread_ids(tstate: int) -> tuple[int, Optional[int]]: ...
def _gil_reader_info() -> dict[str, Any]: ...
def _waited_describe(native_tid: int) -> tuple[Optional[str], int]:
    """What the thread ``native_tid`` is blocked on, as a block's report names it, and how many
    nanoseconds naming it took."""

def _gil_sampler_line(code: CodeType, lasti: int) -> int:
    """The line the GIL-taking sampler names for a frame of ``code`` stopped at byte offset
    ``lasti`` (an instruction with no line, such as the jump back to a loop's start on 3.10 and
    3.11, is named by the line it jumps to)."""

def _native_stack_of(
    native_tid: int, resolve: bool = True
) -> tuple[list[dict[str, Any]], Optional[str], int]:
    """The native stack of a thread now (resolved and folded), the note on it, and how many
    addresses were taken."""

def _native_interrupted_calls() -> tuple[int, int]:
    """System calls the native-frame signal interrupted: (restarted, not restarted)."""
