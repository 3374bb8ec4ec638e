"""Parsing and validation of setting values: durations, choices, allow patterns and package
lists. Every parser takes the value, the setting's name as the user wrote it and where the value
came from, and raises :class:`SettingError` naming all three.

Also the defaults and the environment variables that the plugin-free API (``guard()``,
``offload_check()``) shares with the plugin, so that the API needs nothing of the plugin's
settings (:mod:`loopguard._settings`)."""

from __future__ import annotations

import fnmatch
import functools
import math
import os
import re
from pathlib import Path
from typing import Optional

from ._errors import SettingError
from ._files import modules, relative_path
from ._record import FrozenRecord

__all__ = [
    "ALLOW_HELP",
    "CPU_WAIT_CHOICES",
    "DEFAULT_THRESHOLD",
    "DURATION_HELP",
    "GC_CHOICES",
    "MODES",
    "NATIVE_CHOICES",
    "SAMPLERS",
    "STACK_CHOICES",
    "AllowPattern",
    "environment_sampler",
    "environment_value",
    "format_duration",
    "parse_allow",
    "parse_choice",
    "parse_duration",
    "parse_scan",
]

_DURATION = r"^\s*(?P<num>[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?)\s*(?P<unit>ms|s|us)?\s*$"
_UNITS = {None: 1.0, "s": 1.0, "ms": 1e-3, "us": 1e-6}

DURATION_HELP = "a positive duration such as 100ms, 0.25s or 0.1 (seconds)"

MODES = ("fail", "raise", "warn", "record")
"""What a block over the threshold does: fail the test (raise: also raise in the blocked code),
warn, or only record it."""
GC_CHOICES = ("exclude", "include")
"""Whether time spent in garbage collection counts toward a block's judgement."""
CPU_WAIT_CHOICES = ("exclude", "include")
"""Whether time the loop thread waited for a CPU counts toward a block's judgement."""
NATIVE_CHOICES = ("off", "on")
"""Whether a block's report shows the native frames below the Python frame that made a C call."""
STACK_CHOICES = ("short", "full")
"""How a report prints a stack: library frames between project frames folded, or every frame."""
SAMPLERS = ("auto", "native", "gil")
"""How stacks are read: GIL-free where supported (else by taking the GIL), GIL-free only, or by
taking the GIL."""

DEFAULT_THRESHOLD = 0.1
"""The threshold (seconds) when nothing sets one: the plugin's, ``guard()``'s and
``offload_check()``'s."""


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
        seconds = _plain_duration(value)
        if seconds is None:
            m = _regex(_DURATION).match(value)
            seconds = float(m.group("num")) * _UNITS[m.group("unit")] if m else None
    else:
        seconds = None
    if seconds is None or not math.isfinite(seconds) or seconds <= 0:
        raise SettingError(
            f"invalid value for {name}: {value!r} (from {source}); expected {DURATION_HELP}"
        )
    return seconds


def _plain_duration(text: str) -> Optional[float]:
    """The seconds of a duration written the usual way (``100ms``, ``0.25 s``, ``5``: digits
    with at most one point, and a unit), else None: the full syntax (signs, exponents) is
    left to the regular expression, compiled only for such a value."""
    number = text.strip()
    scale = 1.0
    for unit in ("ms", "us", "s"):
        if number.endswith(unit):
            number, scale = number[: -len(unit)].rstrip(), _UNITS[unit]
            break
    if number.isascii() and number.replace(".", "", 1).isdigit():
        return float(number) * scale
    return None


def parse_choice(value: object, choices: tuple[str, ...], *, name: str, source: str) -> str:
    """``value`` if it is one of ``choices`` (surrounding blanks ignored)."""
    if isinstance(value, str) and value.strip() in choices:
        return value.strip()
    raise SettingError(
        f"invalid value for {name}: {value!r} (from {source}); expected one of {', '.join(choices)}"
    )


def environment_value(key: str) -> Optional[tuple[str, str, str]]:
    """The value of setting ``key`` (``threshold``) in the environment (``LOOPGUARD_KEY``), as
    ``(value, variable's name, "the environment")``, or ``None`` when it is not set."""
    name = f"LOOPGUARD_{key.upper()}"
    value = os.environ.get(name)
    return None if value is None else (value, name, "the environment")


def environment_sampler() -> str:
    """How stacks are read when the watchdog starts without the plugin (``guard()``,
    ``offload_check()``): ``LOOPGUARD_SAMPLER``, else ``"auto"``."""
    picked = environment_value("sampler")
    if picked is None:
        return "auto"
    value, name, where = picked
    return parse_choice(value, SAMPLERS, name=name, source=where)


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


# --- allow patterns and scan ---------------------------------------------------------------

ALLOW_HELP = (
    "module:function, module, path/glob.py or path/glob.py:function "
    "(globs allowed, paths relative to the rootdir)"
)


@functools.cache
def _regex(pattern: str) -> re.Pattern[str]:
    """Compiled at first use: a run without allow patterns compiles none of these."""
    return re.compile(pattern)


_DOTTED_GLOB = r"^[A-Za-z_*?\[\]][\w*?\[\].]*$"
_FUNCTION_GLOB = r"^[\w*?\[\]<>.]+$"
_DOTTED = r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$"


class AllowPattern(FrozenRecord):
    """One allow pattern (``loopguard_allow``, a marker's or ``guard()``'s ``allow``): blocks
    with a matching frame on their stack are allowed. Frozen: equal and hashed by its
    fields."""

    _fields = ("text", "source", "module", "path", "function")
    __slots__ = _fields
    text: str
    source: str
    module: Optional[str]
    path: Optional[str]
    function: Optional[str]

    def __init__(
        self,
        text: str,
        source: str,
        module: Optional[str] = None,
        path: Optional[str] = None,
        function: Optional[str] = None,
    ) -> None:
        self._set("text", text)
        self._set("source", source)
        self._set("module", module)
        self._set("path", path)
        self._set("function", function)

    def matches(self, filename: str, function: str, root: Path) -> bool:
        """True when a frame of ``function`` in ``filename`` matches (paths relative to
        ``root``)."""
        if self.function is not None:
            last = function.rsplit(".", 1)[-1]
            if not (
                fnmatch.fnmatchcase(function, self.function)
                or fnmatch.fnmatchcase(last, self.function)
            ):
                return False
        if self.path is not None:
            return fnmatch.fnmatchcase(relative_path(filename, root), self.path)
        name = modules.name(filename)
        return name is not None and fnmatch.fnmatchcase(name, self.module or "")


def parse_allow(text: object, *, source: str) -> AllowPattern:
    """Parse one allow pattern; ``source`` says where it came from (for the error)."""

    def bad(why: str) -> SettingError:
        return SettingError(
            f"invalid allow pattern {text!r} (from {source}): {why}; expected {ALLOW_HELP}"
        )

    if not isinstance(text, str) or not text.strip():
        raise bad("not a non-empty string")
    where, sep, function = text.strip().rpartition(":")
    if not sep:
        where, function = function, ""
    where = where.strip()
    function = function.strip()
    if sep and not function:
        raise bad("nothing after ':'")
    if function and not _regex(_FUNCTION_GLOB).match(function):
        raise bad(f"{function!r} is not a function name")
    if not where:
        raise bad("no module or path before ':'")
    fn = function or None
    if "/" in where or where.endswith(".py") or os.sep in where:
        path = where.replace(os.sep, "/")
        while path.startswith("./"):
            path = path[2:]
        return AllowPattern(text=text, source=source, path=path, function=fn)
    if not _regex(_DOTTED_GLOB).match(where):
        raise bad(f"{where!r} is neither a dotted module name nor a path to a .py file")
    return AllowPattern(text=text, source=source, module=where, function=fn)


def parse_allow_list(value: object, *, source: str) -> tuple[AllowPattern, ...]:
    """A list of allow patterns (a single string is a list of one), as a marker or ``guard()``
    takes them."""
    patterns = [value] if isinstance(value, str) else value
    if not isinstance(patterns, (list, tuple)):
        raise SettingError(
            f"invalid value for allow: {value!r} (from {source}); expected a list "
            f"of patterns: {ALLOW_HELP}"
        )
    return tuple(parse_allow(p, source=source) for p in patterns)


def parse_scan(value: object, *, name: str, source: str) -> tuple[str, ...]:
    """``loopguard_scan``: package names separated by blanks or commas."""
    items = value if isinstance(value, (list, tuple)) else str(value).replace(",", " ").split()
    out = []
    for item in items:
        if not isinstance(item, str) or not _regex(_DOTTED).match(item.strip()):
            raise SettingError(
                f"invalid value for {name}: {item!r} (from {source}); expected package names "
                "separated by blanks, such as 'mypkg otherpkg'"
            )
        out.append(item.strip())
    return tuple(out)
