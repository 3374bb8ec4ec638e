"""The running task's await chain, read while its loop is blocked.

A loop thread's stack normally holds the whole story of a block: the loop's dispatch, the task's
coroutines, the call that blocked. Not when the task's code switched to a stack of its own: a
greenlet (SQLAlchemy's asyncio extension runs the ORM's sync code, ``run_sync`` functions and
event listeners in one), or any code entered from C on a fresh stack. The thread's frames then
end at that stack's entry, and the coroutines that awaited the bridge (the endpoint, the test)
are not on it: they are suspended in the middle of a call, each at its ``await``.

:func:`describe` reads them. loopguard's assistant thread (native, see ``src/python/
assistant.rs``) calls it once per block that reached the threshold, with the GIL held while the
loop thread is still blocked: the loop thread cannot move on meanwhile, so what it reads is the
block's. It names the running task, and, when the loop thread's stack does not reach the task's
coroutine, walks the task's coroutines from the outermost one down: what each awaits
(``cr_await``) when suspended, the coroutine it is running when it runs one (found on its value
stack: through the collector on 3.12+, which sees a running frame's value stack; on 3.10 and
3.11, found in memory and checked against the callee's link to its caller before it is used:
:class:`_RunningCallee`), with each coroutine frame's current line. Where this process's memory
cannot be read (off Linux, the portable build, a sandbox that denies it), a 3.10 or 3.11 chain
ends at the outermost running coroutine.

The GIL is held while the chain is read, but not throughout: Python code lets it go at a thread
switch, a read through a file at each read. Everything here follows references, which keep
what they point at alive, but for the one step that turns a word of memory into an object: that
step, its reads and its checks are native (``_native.running_callee``), with the GIL held
from the first read to the new reference.

Nothing here runs on the loop thread or per loop iteration.
"""

from __future__ import annotations

import gc
import os
import sys
import types
from typing import Any, Optional

from . import _native

__all__ = ["await_chain", "describe", "install"]

_LIMIT = 200
"""The most coroutines a chain holds."""

_GENERATOR_TYPES = (types.CoroutineType, types.GeneratorType, types.AsyncGeneratorType)

Entry = tuple[str, int, str]


def install() -> None:
    """Make loopguard's assistant describe a blocked loop's task with :func:`describe`."""
    setter = getattr(_native, "set_task_reader", None)
    if setter is not None:
        setter(describe)


def describe(loop: Any, thread_ident: int) -> Optional[tuple[str, list[Entry]]]:
    """``(name, chain)`` of the task running on ``loop`` (whose thread is ``thread_ident``), or
    None when no task runs. ``chain``: :func:`await_chain`, as ``(filename, lineno, function)``.
    Never raises (a chain that cannot be read is empty)."""
    asyncio = sys.modules.get("asyncio")  # never imported here (the GIL is held for a block)
    if asyncio is None:
        return None  # no asyncio loop, so no task
    try:
        task = asyncio.current_task(loop)
    except Exception:  # a loop asyncio does not know (trio's has no object here)
        return None
    if task is None:
        return None
    try:
        name = str(task.get_name())
    except Exception:
        return None
    try:
        chain = await_chain(task, thread_ident)
    except Exception:
        chain = []
    return name, [_entry(f) for f in chain]


def await_chain(task: Any, thread_ident: int) -> list[types.FrameType]:
    """The frames of ``task``'s coroutines, outermost first, down to the innermost one it is
    in; empty when the current stack of thread ``thread_ident`` shows the task's coroutine
    already (the common case: nothing is missing from the live stack)."""
    coro = task.get_coro()
    first = _frame_of(coro)
    if first is None:
        return []
    # The whole live stack, however deep (a deep recursion reaches the task all the same).
    live = sys._current_frames().get(thread_ident)
    while live is not None:
        if live is first:
            return []
        live = live.f_back
    frames: list[types.FrameType] = []
    obj: Any = coro
    while obj is not None and len(frames) < _LIMIT:
        frame = _frame_of(obj)
        if frame is None:
            break
        frames.append(frame)
        obj = _awaited(obj, frame)
    return frames


def _entry(f: types.FrameType) -> Entry:
    code = f.f_code
    return code.co_filename, f.f_lineno or 0, getattr(code, "co_qualname", code.co_name)


def _frame_of(obj: Any) -> Optional[types.FrameType]:
    for attr in ("cr_frame", "gi_frame", "ag_frame"):
        frame = getattr(obj, attr, None)
        if frame is not None:
            return frame
    return None


def _awaited(obj: Any, frame: types.FrameType) -> Any:
    """What coroutine (or generator) ``obj``, whose frame is ``frame``, waits on: the one it
    awaits when suspended, the one it runs when running one; None at the innermost."""
    for attr in ("cr_await", "gi_yieldfrom", "ag_await"):
        inner = getattr(obj, attr, None)
        if inner is not None:
            return inner
    if not any(getattr(obj, a, False) for a in ("cr_running", "gi_running", "ag_running")):
        return None
    if sys.version_info >= (3, 12):
        # The collector sees a running frame's value stack (saved when it called in).
        for inner in gc.get_referents(obj):
            if isinstance(inner, _GENERATOR_TYPES) and _called_from(inner, frame):
                return inner
        return None
    if _running_callee is not None:
        return _running_callee.callee(obj)
    return None


def _called_from(inner: Any, frame: types.FrameType) -> bool:
    inner_frame = _frame_of(inner)
    return inner_frame is not None and inner_frame.f_back is frame


class _RunningCallee:
    """A running coroutine's callee, found in memory where the collector does not show a
    running frame's value stack (before 3.12): the coroutine it runs sits on that value
    stack, whose depth a running frame does not record. Each word of it is checked (a stale
    pointer reads as garbage, never crashes): a coroutine or generator object, alive,
    running, whose frame's caller is this frame; only then is it used. The search and its
    checks are native (``_native.running_callee``, the GIL held throughout: here, a read
    through ``/proc/self/mem`` lets the GIL go, and the loop thread could free the coroutine
    between its checks and its use). The layout is found here, once, on first use, reading
    real coroutines (one running another) through ``/proc/self/mem``, and checked by a search
    for the one; any mismatch turns the reader off."""

    _EXECUTING = 0  # FRAME_EXECUTING
    _CREATED = 0xFE  # FRAME_CREATED (-2)

    def __init__(self) -> None:
        self._fd: Optional[int] = None
        self._ready = False
        self._checked = False
        self._pid = 0

    def callee(self, obj: Any) -> Any:
        if self._pid != os.getpid():
            # First use, or a forked child: the file it opened reads its parent's memory.
            self._close()
            self._pid = os.getpid()
            self._checked = False
        if not self._checked:
            self._checked = True
            try:
                self._open()
            except (OSError, ValueError):
                self._close()
        if not self._ready:
            return None
        try:
            return self._callee(obj)
        except (OSError, ValueError):
            return None

    def _read(self, addr: int, size: int) -> bytes:
        assert self._fd is not None
        data = os.pread(self._fd, size, addr)
        if len(data) != size:
            raise ValueError("short read")
        return data

    def _word(self, addr: int) -> int:
        return int.from_bytes(self._read(addr, 8), sys.byteorder)

    def _callee(self, obj: Any) -> Any:
        find = getattr(_native, "running_callee", None)
        if find is None:
            return None
        caller = self._frame_address(obj)
        slots, count = self._slots(obj, caller)
        kinds = [id(types.CoroutineType), id(types.GeneratorType)]
        return find(slots, count, caller, id(obj), kinds, self._layout())

    def _open(self) -> None:
        if sys.maxsize != 2**63 - 1:  # 64-bit pointers only
            return
        self._fd = os.open("/proc/self/mem", os.O_RDONLY)
        marker = object()
        found: list[Any] = []

        async def inner() -> None:
            found.append(self._callee(outer_coro) is inner_coro)

        async def outer(arg: object) -> None:
            await inner_coro

        inner_coro = inner()
        outer_coro = outer(marker)
        self._find_layout(outer_coro, marker)
        self._ready = True
        try:
            outer_coro.send(None)
        except StopIteration:
            pass
        if found != [True]:
            raise ValueError("the layout does not match")

    def _close(self) -> None:
        self._ready = False
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    # --- per version ---

    def _find_layout(self, coro: Any, marker: object) -> None:
        """Check the layout on ``coro`` (created, not started; its first argument is
        ``marker``); raise ValueError when it does not match."""
        raise NotImplementedError

    def _frame_address(self, coro: Any) -> int:
        """The address of ``coro``'s frame, as a callee's link to its caller holds it."""
        raise NotImplementedError

    def _slots(self, coro: Any, frame: int) -> tuple[int, int]:
        """Where the words that may hold what the frame at ``frame`` (``coro``'s) runs are,
        and how many there are."""
        raise NotImplementedError

    def _layout(self) -> tuple[int, bool, int, int, int]:
        """Where a coroutine keeps its frame, and its frame its state and its caller (see
        ``src/python/callee.rs``): ``(frame_at, frame_is_pointer, state_at, caller_at,
        executing)``."""
        raise NotImplementedError


class _RunningCallee311(_RunningCallee):
    """3.11: a coroutine's frame (``_PyInterpreterFrame``) is inside the coroutine object,
    after ``_PyGenObject_HEAD`` and its frame state byte."""

    # _PyInterpreterFrame: f_func, f_globals, f_builtins, f_locals, f_code, frame_obj,
    # previous, prev_instr, stacktop (int), is_entry, owner, then localsplus.
    _CODE = 32
    _PREVIOUS = 48
    _LOCALSPLUS = 72
    _STATE = -5  # gi_frame_state (int8), after three chars, before the frame (8-aligned)

    def __init__(self) -> None:
        super().__init__()
        self._frame_at = 0

    def _find_layout(self, coro: Any, marker: object) -> None:
        for at in range(48, 200, 8):
            if self._word(id(coro) + at + self._CODE) == id(coro.cr_code):
                if self._word(id(coro) + at + self._LOCALSPLUS) == id(marker):
                    self._frame_at = at
                    break
        else:
            raise ValueError("no frame found in a coroutine")
        if self._read(id(coro) + self._frame_at + self._STATE, 1)[0] != self._CREATED:
            raise ValueError("no frame state found in a coroutine")

    def _frame_address(self, coro: Any) -> int:
        return id(coro) + self._frame_at

    def _slots(self, coro: Any, frame: int) -> tuple[int, int]:
        # Locals, cells and free variables, then the value stack. An argument held in a cell
        # is counted twice here, so the value stack may start earlier: every slot is looked
        # at (only the coroutine this frame runs passes the checks, wherever it is held).
        code = coro.cr_code if hasattr(coro, "cr_code") else coro.gi_code
        slots = len(code.co_varnames) + len(code.co_cellvars) + len(code.co_freevars)
        return frame + self._LOCALSPLUS, slots + code.co_stacksize

    def _layout(self) -> tuple[int, bool, int, int, int]:
        return self._frame_at, False, self._STATE, self._PREVIOUS, self._EXECUTING


class _RunningCallee310(_RunningCallee):
    """3.10: a coroutine points to its frame object (``gi_frame``, right after the object
    header); a running frame's ``f_back`` is its caller, its value stack is ``f_valuestack``."""

    _GI_FRAME = 16
    _F_BACK = 24
    _F_CODE = 32
    _F_VALUESTACK = 64
    _F_STATE = 108  # after f_stackdepth, f_trace_lines/opcodes, f_gen, f_lasti, f_lineno, f_iblock

    def _find_layout(self, coro: Any, marker: object) -> None:
        frame = coro.cr_frame
        if self._word(id(coro) + self._GI_FRAME) != id(frame):
            raise ValueError("no frame found in a coroutine")
        if self._word(id(frame) + self._F_CODE) != id(coro.cr_code):
            raise ValueError("no code found in a frame")
        if self._read(id(frame) + self._F_STATE, 1)[0] != self._CREATED:
            raise ValueError("no frame state found in a frame")

    def _frame_address(self, coro: Any) -> int:
        return id(coro.cr_frame if hasattr(coro, "cr_frame") else coro.gi_frame)

    def _slots(self, coro: Any, frame: int) -> tuple[int, int]:
        code = coro.cr_code if hasattr(coro, "cr_code") else coro.gi_code
        return self._word(frame + self._F_VALUESTACK), code.co_stacksize

    def _layout(self) -> tuple[int, bool, int, int, int]:
        return self._GI_FRAME, True, self._F_STATE, self._F_BACK, self._EXECUTING


_running_callee: Optional[_RunningCallee] = None
if sys.version_info[:2] == (3, 11):
    _running_callee = _RunningCallee311()
elif sys.version_info[:2] == (3, 10):
    _running_callee = _RunningCallee310()
