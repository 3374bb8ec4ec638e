"""Verdicts: what one block means for its test.

A block that reached the watchdog is judged in this order:

1. under the test's threshold (but over the record threshold): *recorded*, severity MONITOR;
2. over it only because of what was not the code's doing (:meth:`BlockEvent.excused`): the
   garbage collection that ran during it (``--loopguard-gc``), the time the loop thread waited
   for a CPU (``--loopguard-cpu-wait``), or several callbacks of one loop iteration none of
   which reached the threshold (the last two not in raise mode, which cuts blocks short):
   *recorded*, with the cause;
3. outside the scanned packages (``loopguard_scan``) or matching an allow pattern: *allowed*;
4. a call site listed in the baseline (matched by file and function): *baselined*;
5. otherwise the mode decides: *failed* (``fail``), *warned* (``warn``) or *recorded*
   (``record``).

Allowed, baselined and recorded blocks never fail a test; all of them appear in the summary and
the JSON report with their outcome.
"""

from __future__ import annotations

import fnmatch
import functools
import json
import os
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ._events import BlockEvent, Frame
from ._settings import SettingError

__all__ = [
    "BASELINE_VERSION",
    "OUTCOMES",
    "SEVERITIES",
    "AllowPattern",
    "Baseline",
    "Judge",
    "Verdict",
    "parse_allow",
    "parse_scan",
    "severity",
]

SEVERITIES = ("CRITICAL", "HIGH", "MEDIUM", "MONITOR")
"""From worst to mildest: over 5 s, 1 to 5 s, 100 ms to 1 s, under 100 ms."""

OUTCOMES = ("failed", "warned", "baselined", "recorded", "allowed")
"""What a block did, from the one that matters most to the one that matters least."""


def severity(duration: float, threshold: float) -> str:
    """The severity of a block of ``duration`` seconds judged against ``threshold``.

    A block under the failing threshold (kept only because of the record threshold) is
    MONITOR whatever its length.
    """
    if duration < threshold or duration < 0.1:
        return "MONITOR"
    if duration > 5.0:
        return "CRITICAL"
    if duration >= 1.0:
        return "HIGH"
    return "MEDIUM"


# --- where a frame is ----------------------------------------------------------------------


@functools.lru_cache(maxsize=4096)
def relative_path(filename: str, root: Path) -> str:
    """``filename`` relative to ``root`` with ``/`` separators, or absolute when outside it."""
    if filename.startswith("<"):
        return filename
    try:
        rel = os.path.relpath(os.path.realpath(filename), os.path.realpath(root))
    except ValueError:
        return filename
    if rel.startswith(".."):
        return Path(filename).as_posix()
    return rel.replace(os.sep, "/")


class _Modules:
    """Maps source file names to dotted module names (``app/x.py`` -> ``app.x``)."""

    def __init__(self) -> None:
        self._by_file: dict[str, str] = {}
        self._cache: dict[str, Optional[str]] = {}
        self._seen = -1

    def name(self, filename: str) -> Optional[str]:
        if filename in self._cache:
            return self._cache[filename]
        real = os.path.realpath(filename)
        if len(sys.modules) != self._seen:
            self._seen = len(sys.modules)
            for mod_name, mod in list(sys.modules.items()):
                f = getattr(mod, "__file__", None)
                if isinstance(f, str):
                    self._by_file.setdefault(os.path.realpath(f), mod_name)
        name = self._by_file.get(real) or self._from_sys_path(real)
        self._cache[filename] = name
        return name

    @staticmethod
    def _from_sys_path(real: str) -> Optional[str]:
        if not real.endswith(".py"):
            return None
        best = None
        for entry in sys.path:
            base = os.path.realpath(entry or os.getcwd()) + os.sep
            if real.startswith(base) and (best is None or len(base) > len(best)):
                best = base
        if best is None:
            return None
        parts = real[len(best) : -len(".py")].split(os.sep)
        if parts[-1] == "__init__":
            parts.pop()
        return ".".join(parts) if parts and all(p.isidentifier() for p in parts) else None


modules = _Modules()


# --- allow patterns and scan ---------------------------------------------------------------

ALLOW_HELP = (
    "module:function, module, path/glob.py or path/glob.py:function "
    "(globs allowed, paths relative to the rootdir)"
)
_DOTTED_GLOB = re.compile(r"^[A-Za-z_*?\[\]][\w*?\[\].]*$")
_FUNCTION_GLOB = re.compile(r"^[\w*?\[\]<>.]+$")
_DOTTED = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


@dataclass(frozen=True)
class AllowPattern:
    """One ``loopguard_allow`` entry: blocks with a matching frame on their stack are allowed."""

    text: str
    source: str
    module: Optional[str] = None
    path: Optional[str] = None
    function: Optional[str] = None

    def matches(self, frame: Frame, root: Path) -> bool:
        if self.function is not None:
            last = frame.function.rsplit(".", 1)[-1]
            if not (
                fnmatch.fnmatchcase(frame.function, self.function)
                or fnmatch.fnmatchcase(last, self.function)
            ):
                return False
        if self.path is not None:
            return fnmatch.fnmatchcase(relative_path(frame.filename, root), self.path)
        name = modules.name(frame.filename)
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
    if function and not _FUNCTION_GLOB.match(function):
        raise bad(f"{function!r} is not a function name")
    if not where:
        raise bad("no module or path before ':'")
    fn = function or None
    if "/" in where or where.endswith(".py") or os.sep in where:
        path = where.replace(os.sep, "/")
        while path.startswith("./"):
            path = path[2:]
        return AllowPattern(text=text, source=source, path=path, function=fn)
    if not _DOTTED_GLOB.match(where):
        raise bad(f"{where!r} is neither a dotted module name nor a path to a .py file")
    return AllowPattern(text=text, source=source, module=where, function=fn)


def parse_scan(value: object, *, name: str, source: str) -> tuple[str, ...]:
    """``loopguard_scan``: package names separated by blanks or commas."""
    items = value if isinstance(value, (list, tuple)) else str(value).replace(",", " ").split()
    out = []
    for item in items:
        if not isinstance(item, str) or not _DOTTED.match(item.strip()):
            raise SettingError(
                f"invalid value for {name}: {item!r} (from {source}); expected package names "
                "separated by blanks, such as 'mypkg otherpkg'"
            )
        out.append(item.strip())
    return tuple(out)


def _in_packages(frame: Frame, packages: tuple[str, ...]) -> bool:
    name = modules.name(frame.filename)
    return name is not None and any(name == p or name.startswith(p + ".") for p in packages)


# --- baseline ------------------------------------------------------------------------------

BASELINE_VERSION = 1


@dataclass
class Baseline:
    """Call sites tolerated by the ratchet, as ``(file, function)`` pairs."""

    path: Path
    sites: frozenset[tuple[str, str]]

    @classmethod
    def load(cls, path: Path) -> Baseline:
        """Read ``path``; raises :class:`SettingError` naming the file and the problem."""

        def bad(why: str) -> SettingError:
            return SettingError(f"invalid baseline file {path}: {why}")

        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise SettingError(
                f"baseline file {path} does not exist; create it with --loopguard-baseline-update"
            ) from None
        except OSError as e:
            raise bad(f"cannot read it ({e.strerror or e})") from None
        try:
            data = json.loads(text)
        except ValueError as e:
            raise bad(f"not JSON ({e})") from None
        if not isinstance(data, dict):
            raise bad(f"expected a JSON object at the top, found {type(data).__name__}")
        if data.get("version") != BASELINE_VERSION:
            raise bad(f"unsupported version {data.get('version')!r}; expected {BASELINE_VERSION}")
        raw = data.get("sites")
        if not isinstance(raw, list):
            raise bad("expected a list under 'sites'")
        sites = set()
        for i, entry in enumerate(raw):
            if not (
                isinstance(entry, dict)
                and isinstance(entry.get("file"), str)
                and isinstance(entry.get("function"), str)
                and entry["file"]
                and entry["function"]
            ):
                raise bad(
                    f"sites[{i}] is {entry!r}; expected an object with non-empty string "
                    "'file' and 'function'"
                )
            sites.add((entry["file"], entry["function"]))
        return cls(path=path, sites=frozenset(sites))

    @staticmethod
    def dumps(sites: Iterable[tuple[str, str]]) -> str:
        """The file's text: sorted, one site per entry, so diffs are small and reviewable."""
        data = {
            "version": BASELINE_VERSION,
            "comment": (
                "loopguard baseline: these call sites may block the event loop without "
                "failing a test. Regenerate with --loopguard-baseline-update."
            ),
            "sites": [{"file": f, "function": fn} for f, fn in sorted(set(sites))],
        }
        return json.dumps(data, indent=2) + "\n"


# --- verdicts ------------------------------------------------------------------------------


@dataclass
class Verdict:
    """One judged block."""

    event: BlockEvent
    test: str
    phase: str
    threshold: float
    severity: str
    outcome: str
    """One of :data:`OUTCOMES`."""
    reason: Optional[str]
    """Why it was allowed, baselined or recorded (``None`` for failed blocks)."""
    mode: str
    key: Optional[tuple[str, str]]
    """The call site as the baseline knows it: ``(file relative to the rootdir, function)``."""

    @property
    def over_threshold(self) -> bool:
        """True when the block would fail a test without the baseline and the mode."""
        return self.outcome in ("failed", "warned", "baselined") or (
            self.outcome == "recorded" and self.reason == "mode record"
        )


_EXCUSE_HINTS = {
    "cpu-wait": "the machine was overloaded: the loop thread was ready to run but waited for a "
    "CPU for much of the block",
    "callbacks": "one loop iteration ran many short callbacks without polling for I/O: none "
    "blocked for the threshold by itself",
}


class Judge:
    def __init__(
        self,
        root: Path,
        *,
        allow: tuple[AllowPattern, ...] = (),
        scan: tuple[str, ...] = (),
        baseline: Optional[Baseline] = None,
        baseline_update: bool = False,
        gc: str = "exclude",
        cpu_wait: str = "exclude",
    ) -> None:
        self.root = root
        self.gc = gc
        self.cpu_wait = cpu_wait
        self.allow = allow
        self.scan = scan
        self.baseline = baseline
        self.baseline_update = baseline_update

    def site_key(self, ev: BlockEvent) -> Optional[tuple[str, str]]:
        if ev.site is None:
            return None
        return relative_path(ev.site.filename, self.root), ev.site.function

    def judge(
        self,
        ev: BlockEvent,
        *,
        test: str,
        phase: str,
        threshold: float,
        mode: str,
        allow: tuple[AllowPattern, ...] = (),
    ) -> Verdict:
        key = self.site_key(ev)

        def verdict(outcome: str, reason: Optional[str]) -> Verdict:
            return Verdict(
                event=ev,
                test=test,
                phase=phase,
                threshold=threshold,
                severity=severity(ev.duration, threshold),
                outcome=outcome,
                reason=reason,
                mode=mode,
                key=key,
            )

        if ev.duration < threshold:
            return verdict("recorded", "under the threshold")
        excused = ev.excused(
            threshold, gc=self.gc, cpu_wait=self.cpu_wait, interrupted=mode == "raise"
        )
        if excused is not None:
            ev.cause, reason = excused
            if excused[0] in _EXCUSE_HINTS:
                ev.hint = _EXCUSE_HINTS[excused[0]]
            return verdict("recorded", reason)
        frames = [*ev.stack, *ev.gil_holder_stack]
        if self.scan and not any(_in_packages(f, self.scan) for f in frames):
            return verdict("allowed", "outside loopguard_scan")
        for pattern in (*allow, *self.allow):
            if any(pattern.matches(f, self.root) for f in frames):
                return verdict("allowed", f"allow {pattern.text!r} ({pattern.source})")
        if self.baseline_update:
            return verdict("baselined", "written to the baseline")
        if self.baseline is not None and key is not None and key in self.baseline.sites:
            return verdict("baselined", f"in the baseline {self.baseline.path.name}")
        if mode == "warn":
            return verdict("warned", "mode warn")
        if mode == "record":
            return verdict("recorded", "mode record")
        return verdict("failed", None)
