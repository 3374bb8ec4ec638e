"""Parsing and validation of loopguard settings (durations, modes, marker arguments)."""

from __future__ import annotations

import math
import re

__all__ = [
    "MODES",
    "SettingError",
    "format_duration",
    "parse_choice",
    "parse_duration",
]

_DURATION = re.compile(
    r"^\s*(?P<num>[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?)\s*(?P<unit>ms|s|us)?\s*$"
)
_UNITS = {None: 1.0, "s": 1.0, "ms": 1e-3, "us": 1e-6}

DURATION_HELP = "a positive duration such as 100ms, 0.25s or 0.1 (seconds)"

MODES = ("fail", "raise", "warn", "record")
GC_CHOICES = ("exclude", "include")
"""Whether time spent in garbage collection counts toward a block's judgement."""
CPU_WAIT_CHOICES = ("exclude", "include")
"""Whether time the loop thread waited for a CPU counts toward a block's judgement."""
"""What a block over the threshold does: fail the test (raise: also raise in the blocked code),
warn, or only record it."""
NATIVE_CHOICES = ("off", "on")
"""Whether a block's report shows the native frames below the Python frame that made a C call."""
STACK_CHOICES = ("short", "full")
"""How a report prints a stack: library frames between project frames folded, or every frame."""


class SettingError(ValueError):
    """An invalid setting value. The message names the setting, the value and its source."""


def parse_duration(value: object, *, name: str, source: str) -> float:
    """Parse ``value`` (``"100ms"``, ``"0.25s"``, ``"0.1"``, or a number of seconds) to seconds.

    ``name`` is the setting as the user wrote it (``--loopguard-threshold``) and ``source``
    where the value came from (``the command line``); both appear in the error.
    """
    seconds: float | None
    if isinstance(value, bool):
        seconds = None
    elif isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        m = _DURATION.match(value)
        seconds = float(m.group("num")) * _UNITS[m.group("unit")] if m else None
    else:
        seconds = None
    if seconds is None or not math.isfinite(seconds) or seconds <= 0:
        raise SettingError(
            f"invalid value for {name}: {value!r} (from {source}); expected {DURATION_HELP}"
        )
    return seconds


def parse_choice(value: object, choices: tuple[str, ...], *, name: str, source: str) -> str:
    """``value`` if it is one of ``choices`` (surrounding blanks ignored)."""
    if isinstance(value, str) and value.strip() in choices:
        return value.strip()
    raise SettingError(
        f"invalid value for {name}: {value!r} (from {source}); expected one of {', '.join(choices)}"
    )


def format_duration(seconds: float) -> str:
    """Human form of a duration: ``312 ms``, ``1.25 s``, ``0.4 ms``."""
    ms = seconds * 1000.0
    if ms >= 10_000:
        return f"{seconds:.1f} s"
    if ms >= 1000:
        return f"{seconds:.2f} s"
    if ms >= 10:
        return f"{ms:.0f} ms"
    return f"{ms:.1f} ms"
