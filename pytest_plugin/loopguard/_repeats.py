"""Repeated frames of a deep recursion: found, folded for the report, and written folded in JSON.

A block at the bottom of a recursion 3,000 deep has a stack of 3,000 copies of one frame (or of
a short cycle of frames, for mutual recursion: ``a → b → a → b``). :func:`find_repeats` finds
such runs: at each place, the block of up to :data:`MAX_PERIOD` entries that repeats most
consecutively (covering most entries; the shortest block on a tie). The failure report prints
a run as CPython's traceback does (:func:`repeat_lines`): a frame repeated is shown three times,
then ``[Previous line repeated 2997 more times]``; a cycle of several is shown once, then
``[Previous 2 lines repeated 1499 more times]``. In JSON a run is written once, its first frame
carrying ``"repeat": {"frames": 2, "times": 1500}`` (:func:`stack_to_json`,
:func:`stack_from_json`): exact, and small.

The watchdog folds its samples the same way (``src/fold.rs``), with ``repeats`` beside the
frames; :func:`unfold` restores them.

The samplers read at most the innermost 10,000 and the outermost 100 frames of a stack; a frame
of file ``<loopguard>`` stands for those they did not read (:func:`is_marker`), and its
function says how many (``<4321 frames not read: ...>``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Optional, TypeVar

__all__ = [
    "MAX_PERIOD",
    "Repeat",
    "find_repeats",
    "fold_repeats",
    "frames_in",
    "is_marker",
    "marker_text",
    "repeat_lines",
    "stack_from_json",
    "stack_to_json",
    "unfold",
]

MAX_PERIOD = 8
"""Longest block of frames looked for (a cycle of mutual recursion)."""

MARKER_FILE = "<loopguard>"
"""The file name of the frames the samplers put in a stack in place of frames not read."""

_T = TypeVar("_T")


def find_repeats(items: Sequence[Any]) -> list[tuple[int, int, int]]:
    """The runs of ``items``: ``(start, frames, times)`` for each block of ``frames`` items at
    ``start`` that occurs ``times`` (at least 2) times in a row; in order, not overlapping."""
    n = len(items)
    runs = []
    i = 0
    while i < n:
        best_p, best_times = 1, 1
        # Candidate blocks: those whose first item comes back right after them.
        window = items[i + 1 : i + 1 + MAX_PERIOD]
        for p in range(1, min(MAX_PERIOD, (n - i) // 2) + 1):
            if window[p - 1] != items[i]:
                continue
            block = items[i : i + p]
            times = 2 if items[i + p : i + 2 * p] == block else 1
            if times < 2:
                continue
            while items[i + times * p : i + (times + 1) * p] == block:
                times += 1
            if p * times > best_p * best_times:
                best_p, best_times = p, times
        if best_times >= 2:
            runs.append((i, best_p, best_times))
            i += best_p * best_times
        else:
            i += 1
    return runs


@dataclass(frozen=True)
class Repeat:
    """A block of entries of a stack repeated consecutively, printed once."""

    entries: tuple[Any, ...]
    times: int

    @property
    def frames(self) -> int:
        """Frames of the stack it stands for (each entry counts its own frames)."""
        return self.times * sum(frames_in(e) for e in self.entries)


def frames_in(entry: Any) -> int:
    """Frames of a stack an entry of a folded stack stands for (none for a marker)."""
    if isinstance(entry, Repeat):
        return entry.frames
    if getattr(entry, "filename", None) == MARKER_FILE:
        return 0
    count = getattr(entry, "count", None)  # a run of library frames (``_failure.Fold``)
    return count if isinstance(count, int) else 1


def fold_repeats(entries: Sequence[Any], *, min_times: int = 2) -> list[Any]:
    """``entries`` with each run of at least ``min_times`` copies as one :class:`Repeat`."""
    out: list[Any] = []
    i = 0
    for start, p, times in find_repeats(entries):
        out.extend(entries[i:start])
        block = tuple(entries[start : start + p])
        if times >= min_times:
            out.append(Repeat(block, times))
        else:
            out.extend(block * times)
        i = start + p * times
    out.extend(entries[i:])
    return out


SHOWN_COPIES = 3
"""Copies of a repeated frame printed before the note (CPython's traceback prints three)."""


def repeat_lines(r: Repeat, lines_of: Callable[[Any], list[str]], indent: str) -> list[str]:
    """The report's lines for a run: a repeated frame printed three times then the note, as
    CPython's traceback does; a repeated cycle of several printed once then the note."""
    copies = SHOWN_COPIES if len(r.entries) == 1 else 1
    copies = min(copies, r.times)
    lines = [line for _ in range(copies) for e in r.entries for line in lines_of(e)]
    more = r.times - copies
    if more:
        what = "line" if len(r.entries) == 1 else f"{len(r.entries)} lines"
        lines.append(f"{indent}[Previous {what} repeated {more} more time{'s' * (more != 1)}]")
    return lines


def unfold(frames: Sequence[_T], repeats: Sequence[tuple[int, int, int]]) -> list[_T]:
    """The stack of ``frames`` whose blocks ``(at, frames, times)`` (``at``: an index in
    ``frames``) stand for ``times`` copies of themselves."""
    out: list[_T] = []
    i = 0
    for at, p, times in repeats:
        if at < i or p < 1 or times < 1:
            raise ValueError(f"malformed repeat {(at, p, times)} of a stack of {len(frames)}")
        out.extend(frames[i:at])
        out.extend(list(frames[at : at + p]) * times)
        i = at + p
    out.extend(frames[i:])
    return out


def is_marker(frame: Any) -> bool:
    """True for a frame that stands for frames the samplers did not read."""
    return frame.filename == MARKER_FILE


def marker_text(frame: Any) -> str:
    """What a marker frame says, for the report: ``4321 frames not read: ...``."""
    return frame.function.strip("<>")


def stack_to_json(
    stack: Sequence[Any], to_json: Callable[[Any], dict[str, Any]]
) -> list[dict[str, Any]]:
    """A stack as JSON: each frame as ``to_json`` writes it, each run written once, its first
    frame with ``"repeat": {"frames": N, "times": M}``."""
    out = []
    i = 0
    for start, p, times in find_repeats(stack):
        out.extend(to_json(f) for f in stack[i:start])
        block = [to_json(f) for f in stack[start : start + p]]
        block[0]["repeat"] = {"frames": p, "times": times}
        out.extend(block)
        i = start + p * times
    out.extend(to_json(f) for f in stack[i:])
    return out


class RepeatError(ValueError):
    """A ``repeat`` of a stack's JSON that does not fit the stack."""


def stack_from_json(items: list[Any], frames: list[_T]) -> list[_T]:
    """The stack :func:`stack_to_json` wrote as ``items``, whose frames were read as ``frames``:
    its runs unfolded. Raises :class:`RepeatError` (its message starts with the item's index,
    ``[3]: ...``) for a ``repeat`` that is malformed or runs past the stack's end."""
    runs = []
    i = 0
    for at, d in enumerate(items):
        rep: Optional[Any] = d.get("repeat") if isinstance(d, dict) else None
        if rep is None:
            continue
        p = rep.get("frames") if isinstance(rep, dict) else None
        times = rep.get("times") if isinstance(rep, dict) else None
        if not (_count(p) and _count(times)):
            raise RepeatError(
                f"[{at}]: expected 'repeat' as {{frames, times}} (positive integers), "
                f"found {rep!r:.80}"
            )
        if at < i or at + p > len(items):
            raise RepeatError(f"[{at}]: its 'repeat' of {p} frames overlaps another or the end")
        runs.append((at, p, times))
        i = at + p
    return unfold(frames, runs) if runs else frames


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1
