"""The settings of a session and of each test, resolved once (the plugin's state, which holds
them, is :mod:`loopguard._state`).

Every setting is read here, with one precedence: marker > command line > environment > ini
(``--loopguard-KEY``, ``LOOPGUARD_KEY``, ini ``loopguard_key``, ``@pytest.mark.loopguard``).
Values are parsed by :mod:`loopguard._parse`; an invalid one is a :class:`SettingError` naming
the setting, the value and where it came from.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from ._errors import SettingError
from ._files import relative_path
from ._judge import Baseline, Judge
from ._parse import (
    ALLOW_HELP,
    CPU_WAIT_CHOICES,
    DEFAULT_THRESHOLD,
    DURATION_HELP,
    GC_CHOICES,
    MODES,
    NATIVE_CHOICES,
    SAMPLERS,
    STACK_CHOICES,
    AllowPattern,
    environment_value,
    format_duration,
    parse_allow,
    parse_allow_list,
    parse_choice,
    parse_duration,
    parse_scan,
)
from ._record import FrozenRecord, Record
from ._runtime import LAG_PROBE_INTERVAL

if TYPE_CHECKING:
    import pytest


def check_writable(path: Path, *, name: str, source: str) -> None:
    """:func:`loopguard._report.check_writable`: the reports' module is imported only when a
    report is asked for."""
    from ._report import check_writable as check

    check(path, name=name, source=source)


__all__ = [
    "MARKER",
    "Settings",
    "TestSettings",
    "add_options",
    "header_lines",
    "marker_settings",
    "resolve",
]

THRESHOLD_HELP = (
    f"fail a test whose event loop is blocked for longer than this: {DURATION_HELP}; default "
    f"{format_duration(DEFAULT_THRESHOLD)}"
)
RECORD_THRESHOLD_HELP = (
    "also record (never fail) blocks longer than this and shorter than the threshold, as "
    f"severity MONITOR: {DURATION_HELP}; default: off"
)
MODE_HELP = (
    "what a block over the threshold does: fail the test after it ran (fail, the default); "
    "also raise loopguard.LoopBlockedError inside the blocked code, at the blocking line "
    "(raise); emit a loopguard.LoopBlockedWarning (warn); or only record it for the summary "
    "and reports (record)"
)
GC_HELP = (
    "whether time spent in garbage collection counts toward a block: a block that crosses the "
    "threshold only with it is recorded, not failed (exclude, the default), or judged by its "
    "whole length (include)"
)
CPU_WAIT_HELP = (
    "whether time the loop thread waited for a CPU (the machine was busy) counts toward a "
    "block: a block that crosses the threshold only with it is recorded, not failed (exclude, "
    "the default), or judged by its whole length (include)"
)
SAMPLER_HELP = (
    "how stacks are captured: auto (GIL-free where supported, else by taking the GIL), "
    "native (GIL-free or fail) or gil"
)
JSON_HELP = "write a JSON report of every block to this file at the end of the session"
HTML_HELP = (
    "write an HTML report (one self-contained file: hotspots, stacks, per-test timelines) to "
    "this file at the end of the session"
)
BASELINE_HELP = (
    "a baseline file: blocks at the call sites it lists (file and function) do not fail tests"
)
BASELINE_UPDATE_HELP = "write the baseline file from the call sites that block in this run"
ALLOW_INI_HELP = f"call sites allowed to block, one per line: {ALLOW_HELP}"
SCAN_HELP = (
    "only judge blocks whose stack passes through these packages (names separated by blanks); "
    "other blocks are allowed"
)
STACK_HELP = (
    "how failure reports print stacks: short (the default) folds library frames between "
    "project frames into one line naming their packages; full prints every frame (as -vv does)"
)
NATIVE_HELP = (
    "also record the native frames below the Python frame that made a C call (a sqlite3 query, "
    "zlib, a regex, a C extension), read once a block is detected: off (the default) or on"
)
MARKER = (
    "loopguard(threshold=None, enabled=True, mode=None, allow=(), max_lag=None, native=None): "
    "fail the test "
    "if an event "
    "loop is blocked for longer than threshold (e.g. '50ms', 0.05); enabled=False turns "
    "loopguard off for the test; mode='fail'|'raise'|'warn'|'record' overrides "
    "--loopguard-mode ('raise' raises LoopBlockedError at the blocking line); "
    "allow=[patterns] allows blocks at call sites such as 'mypkg.startup:load_model' or "
    "'app/config.py'; max_lag='100ms' fails the test if its loop lag (how late a timer every "
    f"{format_duration(LAG_PROBE_INTERVAL)} runs) exceeds it; native='on'|'off' overrides "
    "--loopguard-native"
)
_MARKER_ARGS = {"threshold", "enabled", "mode", "allow", "max_lag", "native"}


class Settings(Record):
    """The session's settings; ``*_source`` says where a value came from (the name the user
    wrote, or ``"default"``), for the report header."""

    _fields = (
        "threshold",
        "threshold_source",
        "sampler",
        "mode",
        "mode_source",
        "gc",
        "gc_source",
        "cpu_wait",
        "cpu_wait_source",
        "stack",
        "stack_source",
        "native",
        "native_source",
        "record_threshold",
        "json_path",
        "html_path",
        "baseline_path",
        "baseline_update",
        "allow",
        "scan",
    )
    __slots__ = _fields

    def __init__(
        self,
        threshold: float,
        threshold_source: str,
        sampler: str,
        mode: str = "fail",
        mode_source: str = "default",
        gc: str = "exclude",
        gc_source: str = "default",
        cpu_wait: str = "exclude",
        cpu_wait_source: str = "default",
        stack: str = "short",
        stack_source: str = "default",
        native: str = "off",
        native_source: str = "default",
        record_threshold: Optional[float] = None,
        json_path: Optional[Path] = None,
        html_path: Optional[Path] = None,
        baseline_path: Optional[Path] = None,
        baseline_update: bool = False,
        allow: tuple[AllowPattern, ...] = (),
        scan: tuple[str, ...] = (),
    ) -> None:
        self.threshold = threshold
        self.threshold_source = threshold_source
        self.sampler = sampler
        self.mode = mode
        self.mode_source = mode_source
        self.gc = gc
        self.gc_source = gc_source
        self.cpu_wait = cpu_wait
        self.cpu_wait_source = cpu_wait_source
        self.stack = stack
        self.stack_source = stack_source
        self.native = native
        self.native_source = native_source
        self.record_threshold = record_threshold
        self.json_path = json_path
        self.html_path = html_path
        self.baseline_path = baseline_path
        self.baseline_update = baseline_update
        self.allow = allow
        self.scan = scan

    def floor(self, threshold: float) -> float:
        """The shortest block worth keeping for a test with ``threshold``."""
        if self.record_threshold is None:
            return threshold
        return min(threshold, self.record_threshold)

    def as_json(self, root: Path) -> dict[str, Any]:
        def ms(s: Optional[float]) -> Optional[float]:
            return None if s is None else round(s * 1000.0, 3)

        return {
            "threshold_ms": ms(self.threshold),
            "record_threshold_ms": ms(self.record_threshold),
            "mode": self.mode,
            "gc": self.gc,
            "cpu_wait": self.cpu_wait,
            "native": self.native,
            "sampler": self.sampler,
            "allow": [p.text for p in self.allow],
            "scan": list(self.scan),
            "baseline": relative_path(str(self.baseline_path), root)
            if self.baseline_path
            else None,
        }


class TestSettings(FrozenRecord):
    """What the markers of one test set (the session's settings where they set nothing).
    Frozen: equal and hashed by its fields."""

    __test__ = False  # not a test class, whoever imports it

    _fields = ("threshold", "enabled", "mode", "allow", "max_lag", "native")
    __slots__ = _fields
    threshold: float
    enabled: bool
    mode: str
    allow: tuple[AllowPattern, ...]
    max_lag: Optional[float]
    native: str

    def __init__(
        self,
        threshold: float,
        enabled: bool,
        mode: str,
        allow: tuple[AllowPattern, ...] = (),
        max_lag: Optional[float] = None,
        native: str = "off",
    ) -> None:
        self._set("threshold", threshold)
        self._set("enabled", enabled)
        self._set("mode", mode)
        self._set("allow", allow)
        self._set("max_lag", max_lag)
        self._set("native", native)

    def floor(self, settings: Settings) -> float:
        """The shortest block worth keeping for this test."""
        return settings.floor(self.threshold)


# The settings that take a value: (key, metavar, help, has an ini option). Each is
# --loopguard-KEY on the command line, LOOPGUARD_KEY in the environment and, where it has one,
# ini loopguard_key: the names `_pick` reads.
_VALUE_OPTIONS = (
    ("threshold", "DURATION", THRESHOLD_HELP, True),
    ("record_threshold", "DURATION", RECORD_THRESHOLD_HELP, True),
    ("mode", "MODE", MODE_HELP, True),
    ("gc", "exclude|include", GC_HELP, True),
    ("cpu_wait", "exclude|include", CPU_WAIT_HELP, True),
    ("stack", "short|full", STACK_HELP, True),
    ("native", "off|on", NATIVE_HELP, True),
    ("sampler", "KIND", SAMPLER_HELP, False),
    ("json", "PATH", JSON_HELP, True),
    ("html", "PATH", HTML_HELP, True),
    ("baseline", "PATH", BASELINE_HELP, True),
)
_INI_KEYS = frozenset(key for key, _, _, has_ini in _VALUE_OPTIONS if has_ini)


def add_options(parser: pytest.Parser) -> None:
    """Register the command line and ini options."""
    group = parser.getgroup("loopguard", "fail tests that block the asyncio event loop")
    for key, metavar, help_, has_ini in _VALUE_OPTIONS:
        sources = f"env LOOPGUARD_{key.upper()}" + (f", ini loopguard_{key}" if has_ini else "")
        group.addoption(
            f"--loopguard-{key.replace('_', '-')}",
            dest=f"loopguard_{key}",
            metavar=metavar,
            default=None,
            help=f"{help_} ({sources})",
        )
    group.addoption(
        "--loopguard-baseline-update",
        dest="loopguard_baseline_update",
        action="store_true",
        default=False,
        help=BASELINE_UPDATE_HELP,
    )
    for key, _, help_, has_ini in _VALUE_OPTIONS:
        if has_ini:
            parser.addini(f"loopguard_{key}", help_, default=None)
    parser.addini("loopguard_allow", ALLOW_INI_HELP, type="linelist", default=[])
    parser.addini("loopguard_scan", SCAN_HELP, default=None)


def _ini_source(config: pytest.Config) -> str:
    return f"the config file {config.inipath}" if config.inipath else "the config file"


def _pick(config: pytest.Config, key: str) -> Optional[tuple[Any, str, str]]:
    """The first value set for setting ``key`` (``threshold``): command line, env, ini.

    Returns ``(value, name as the user wrote it, where it came from)`` or ``None``.
    """
    cli = config.getoption(f"loopguard_{key}")
    if cli is not None:
        return cli, f"--loopguard-{key.replace('_', '-')}", "the command line"
    env = environment_value(key)
    if env is not None:
        return env
    if key not in _INI_KEYS:
        return None
    ini = config.getini(f"loopguard_{key}")
    # An empty ini value means "not set"; an empty CLI or env value is a mistake.
    if ini is not None and str(ini).strip():
        return ini, f"loopguard_{key}", _ini_source(config)
    return None


def _choice(
    config: pytest.Config, key: str, choices: tuple[str, ...], default: str
) -> tuple[str, str]:
    """The value of the choice setting ``key`` and where it came from (the name the user
    wrote, or ``"default"``)."""
    picked = _pick(config, key)
    if picked is None:
        return default, "default"
    value, name, where = picked
    return parse_choice(value, choices, name=name, source=where), name


def _path(config: pytest.Config, value: str, name: str, where: str) -> Path:
    if not value.strip():
        raise SettingError(f"invalid value for {name}: {value!r} (from {where}); expected a path")
    path = Path(os.path.expanduser(value.strip()))
    if not path.is_absolute():
        if name.startswith("loopguard_") and config.inipath:
            path = config.inipath.parent / path  # ini values: relative to the ini file
        else:
            path = config.invocation_params.dir / path
    return path


def resolve(config: pytest.Config) -> tuple[Settings, Judge]:
    """The session's settings, and the judge that applies them; raises :class:`SettingError`."""
    threshold, source = DEFAULT_THRESHOLD, "default"
    picked = _pick(config, "threshold")
    if picked is not None:
        value, name, where = picked
        threshold, source = parse_duration(value, name=name, source=where), name
    sampler, _ = _choice(config, "sampler", SAMPLERS, "auto")
    s = Settings(threshold=threshold, threshold_source=source, sampler=sampler)
    s.mode, s.mode_source = _choice(config, "mode", MODES, s.mode)
    s.gc, s.gc_source = _choice(config, "gc", GC_CHOICES, s.gc)
    s.cpu_wait, s.cpu_wait_source = _choice(config, "cpu_wait", CPU_WAIT_CHOICES, s.cpu_wait)
    s.stack, s.stack_source = _choice(config, "stack", STACK_CHOICES, s.stack)
    s.native, s.native_source = _choice(config, "native", NATIVE_CHOICES, s.native)

    picked = _pick(config, "record_threshold")
    if picked is not None:
        value, name, where = picked
        s.record_threshold = parse_duration(value, name=name, source=where)
        if s.record_threshold >= threshold:
            raise SettingError(
                f"invalid value for {name}: {value!r} (from {where}); expected a duration "
                f"below the threshold ({format_duration(threshold)})"
            )

    # Under pytest-xdist, workers ship their verdicts to the controller (see _xdist.py), which
    # alone writes the JSON report and the baseline.
    picked = _pick(config, "json")
    if picked is not None:
        value, name, where = picked
        s.json_path = _path(config, str(value), name, where)
        check_writable(s.json_path, name=name, source=where)

    picked = _pick(config, "html")
    if picked is not None:
        value, name, where = picked
        s.html_path = _path(config, str(value), name, where)
        check_writable(s.html_path, name=name, source=where)

    picked = _pick(config, "baseline")
    s.baseline_update = bool(config.getoption("loopguard_baseline_update"))
    baseline = None
    if picked is not None:
        value, name, where = picked
        s.baseline_path = _path(config, str(value), name, where)
        if s.baseline_update:
            check_writable(s.baseline_path, name=name, source=where)
            if s.baseline_path.exists():
                Baseline.load(s.baseline_path)  # do not overwrite something else
        else:
            baseline = Baseline.load(s.baseline_path)
    if picked is None and s.baseline_update:
        raise SettingError(
            "--loopguard-baseline-update needs the baseline's path: --loopguard-baseline=PATH "
            "(or ini loopguard_baseline, env LOOPGUARD_BASELINE)"
        )

    ini_source = _ini_source(config)
    s.allow = tuple(
        parse_allow(text, source=f"loopguard_allow in {ini_source}")
        for text in config.getini("loopguard_allow")
    )
    scan = config.getini("loopguard_scan")
    if scan is not None and str(scan).strip():
        s.scan = parse_scan(scan, name="loopguard_scan", source=ini_source)

    judge = Judge(
        config.rootpath,
        allow=s.allow,
        scan=s.scan,
        baseline=baseline,
        baseline_update=s.baseline_update,
        gc=s.gc,
        cpu_wait=s.cpu_wait,
    )
    return s, judge


def marker_settings(item: pytest.Item, default: TestSettings) -> TestSettings:
    """The settings of ``item``: ``default`` (the session's), unless loopguard markers change
    them (the closest marker's value wins; allow patterns add up). Raises
    :class:`SettingError`."""
    marks = list(item.iter_markers("loopguard"))
    if not marks:
        return default
    d = default
    threshold, enabled, mode, max_lag, native = d.threshold, d.enabled, d.mode, d.max_lag, d.native
    where = f"@pytest.mark.loopguard on {item.nodeid}"
    allow: list[AllowPattern] = []
    # Closest marker wins: iter_markers yields the function's own first.
    for mark in reversed(marks):
        if mark.args:
            raise SettingError(
                f"{item.nodeid}: @pytest.mark.loopguard takes keyword arguments only "
                f"(threshold=..., enabled=..., mode=..., allow=...), got positional "
                f"{mark.args!r}"
            )
        unknown = set(mark.kwargs) - _MARKER_ARGS
        if unknown:
            raise SettingError(
                f"{item.nodeid}: unknown @pytest.mark.loopguard argument(s) "
                f"{', '.join(sorted(unknown))}; expected {', '.join(sorted(_MARKER_ARGS))}"
            )
        if "threshold" in mark.kwargs:
            threshold = parse_duration(mark.kwargs["threshold"], name="threshold", source=where)
        if "mode" in mark.kwargs:
            mode = parse_choice(mark.kwargs["mode"], MODES, name="mode", source=where)
        if "native" in mark.kwargs:
            native = _native_arg(mark.kwargs["native"], where)
        if "max_lag" in mark.kwargs:
            max_lag = parse_duration(mark.kwargs["max_lag"], name="max_lag", source=where)
        if "allow" in mark.kwargs:
            allow.extend(parse_allow_list(mark.kwargs["allow"], source=where))
        if "enabled" in mark.kwargs:
            value = mark.kwargs["enabled"]
            if not isinstance(value, bool):
                raise SettingError(
                    f"invalid value for enabled: {value!r} (from {where}); expected True or False"
                )
            enabled = value
    return TestSettings(threshold, enabled, mode, tuple(allow), max_lag, native)


def _native_arg(value: object, where: str) -> str:
    """The marker's ``native``: ``"on"``/``"off"`` or a bool."""
    if isinstance(value, bool):
        return "on" if value else "off"
    return parse_choice(value, NATIVE_CHOICES, name="native", source=where)


_LATE_CAPTURE = (
    "a block in C code that holds the GIL (a regex, sorted(), json.dumps(), a C extension) "
    "is seen only when that code returns, so its stack may show a later line"
)


def header_lines(
    s: Settings,
    *,
    baseline: Optional[Baseline],
    reader_off: Optional[str],
    root: Path,
    sampler: Optional[str],
    cpu_wait_known: bool,
) -> list[str]:
    """The report header's lines: the active settings and where the non-default ones came
    from; ``baseline`` is the one loaded, ``reader_off`` why the GIL-free stack reader is off
    (when the user did not ask for that), ``sampler`` the stack capture in use,
    ``cpu_wait_known`` whether the kernel reports run-queue time."""
    how = (
        "GIL-free stack capture"
        if (sampler or "?") == "native"
        else "stacks read by taking the GIL (may be late)"
    )
    src = "" if s.threshold_source == "default" else f" (from {s.threshold_source})"
    lines = [f"loopguard: threshold {format_duration(s.threshold)}{src}, {how}"]
    from . import _native

    portable = _native.portable()
    if portable is not None:
        lines.append(
            "loopguard: the GIL-free stack reader, system call names and CPU figures are off: "
            f"{portable}; {_LATE_CAPTURE}"
        )
    elif reader_off is not None:
        lines.append(f"loopguard: the GIL-free stack reader is off: {reader_off}; {_LATE_CAPTURE}")
    extra = []
    if s.mode != "fail":
        extra.append(f"mode {s.mode} (from {s.mode_source})")
    if s.gc != "exclude":
        extra.append(f"garbage collection counts toward blocks (from {s.gc_source})")
    if s.cpu_wait != "exclude":
        extra.append(f"waiting for a CPU counts toward blocks (from {s.cpu_wait_source})")
    elif not cpu_wait_known:
        why = (
            "not measured in this build"
            if portable is not None
            else "this kernel does not report run-queue time: no /proc/self/task/TID/schedstat"
        )
        extra.append(f"waiting for a CPU counts toward blocks ({why})")
    if s.native != "off":
        extra.append(
            f"native frames (from {s.native_source})"
            if sampler == "native"
            else "no native frames: they need the GIL-free stack reader, which is off"
        )
    if s.stack != "short":
        extra.append(f"{s.stack} stacks (from {s.stack_source})")
    if s.record_threshold is not None:
        extra.append(f"recording blocks over {format_duration(s.record_threshold)}")
    if s.allow:
        extra.append(f"{len(s.allow)} allow pattern{'s' * (len(s.allow) != 1)}")
    if s.scan:
        extra.append(f"scanning {', '.join(s.scan)}")
    if s.baseline_path is not None:
        verb = "updating" if s.baseline_update else "baseline"
        n = f" ({len(baseline.sites)} call sites)" if baseline else ""
        extra.append(f"{verb} {relative_path(str(s.baseline_path), root)}{n}")
    if s.json_path is not None:
        extra.append(f"JSON report {relative_path(str(s.json_path), root)}")
    if extra:
        lines.append("loopguard: " + ", ".join(extra))
    return lines
