"""The pytest plugin: ``pytest -p loopguard``.

This module is the wiring: options, markers and hooks. What a block means is decided in
:mod:`loopguard._judge`; what the session is told, in :mod:`loopguard._report`.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import warnings
from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import pytest

from . import _native
from ._events import BlockEvent, format_event, format_events, make_context
from ._fixture import ExpectBlock, LagStats, LoopguardFixture, lag_stats
from ._guard import DEFAULT_THRESHOLD, LoopBlockedWarning
from ._html import attach_to_pytest_html
from ._judge import (
    ALLOW_HELP,
    AllowPattern,
    Baseline,
    Judge,
    Verdict,
    modules,
    parse_allow,
    parse_scan,
    relative_path,
)
from ._phases import PhaseTimes
from ._report import (
    annotations,
    check_writable,
    fixed_lines,
    new_run,
    report_chunks,
    report_data,
    summary_lines,
    write_atomically,
)
from ._runtime import runtime
from ._settings import (
    CPU_WAIT_CHOICES,
    DURATION_HELP,
    GC_CHOICES,
    MODES,
    STACK_CHOICES,
    SettingError,
    format_duration,
    parse_choice,
    parse_duration,
)
from ._xdist import XdistPlugin

__all__ = [
    "loopguard",
    "pytest_addoption",
    "pytest_collection_modifyitems",
    "pytest_configure",
    "pytest_report_header",
    "pytest_runtest_call",
    "pytest_runtest_makereport",
    "pytest_runtest_setup",
    "pytest_runtest_teardown",
    "pytest_sessionfinish",
    "pytest_terminal_summary",
    "pytest_unconfigure",
]

THRESHOLD_HELP = (
    f"fail a test whose event loop is blocked for longer than this: {DURATION_HELP}; default 100ms"
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
SAMPLERS = ("auto", "native", "gil")
MARKER = (
    "loopguard(threshold=None, enabled=True, mode=None, allow=(), max_lag=None): fail the test "
    "if an event "
    "loop is blocked for longer than threshold (e.g. '50ms', 0.05); enabled=False turns "
    "loopguard off for the test; mode='fail'|'raise'|'warn'|'record' overrides "
    "--loopguard-mode ('raise' raises LoopBlockedError at the blocking line); "
    "allow=[patterns] allows blocks at call sites such as 'mypkg.startup:load_model' or "
    "'app/config.py'; max_lag='100ms' fails the test if its loop lag (how late a timer every "
    "10 ms runs) exceeds it"
)
_MARKER_ARGS = {"threshold", "enabled", "mode", "allow", "max_lag"}


@dataclass
class _Settings:
    threshold: float
    threshold_source: str
    sampler: str
    mode: str = "fail"
    mode_source: str = "default"
    gc: str = "exclude"
    gc_source: str = "default"
    cpu_wait: str = "exclude"
    cpu_wait_source: str = "default"
    stack: str = "short"
    stack_source: str = "default"
    record_threshold: Optional[float] = None
    json_path: Optional[Path] = None
    html_path: Optional[Path] = None
    baseline_path: Optional[Path] = None
    baseline_update: bool = False
    allow: tuple[AllowPattern, ...] = ()
    scan: tuple[str, ...] = ()

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
            "sampler": self.sampler,
            "allow": [p.text for p in self.allow],
            "scan": list(self.scan),
            "baseline": relative_path(str(self.baseline_path), root)
            if self.baseline_path
            else None,
        }


@dataclass(frozen=True)
class _TestSettings:
    """What the markers of one test set (the session's settings where they set nothing)."""

    threshold: float
    enabled: bool
    mode: str
    allow: tuple[AllowPattern, ...] = ()
    max_lag: Optional[float] = None

    def floor(self, settings: _Settings) -> float:
        """The shortest block worth keeping for this test."""
        return settings.floor(self.threshold)


class _TestState:
    """The test that is running (or has just run): its settings, phase and verdicts. Only the
    current test has one, so a collected test costs no memory until it runs."""

    __slots__ = (
        "allow",
        "enabled",
        "expects",
        "item",
        "max_lag",
        "mode",
        "phase",
        "phase_start_ns",
        "test_start_ns",
        "threshold",
        "verdicts",
    )

    def __init__(self, item: pytest.Item, settings: _TestSettings) -> None:
        self.item = item
        self.threshold = settings.threshold
        self.enabled = settings.enabled
        self.mode = settings.mode
        self.allow = settings.allow
        self.max_lag = settings.max_lag
        self.verdicts: dict[str, list[Verdict]] = {}
        self.phase = "setup"
        self.phase_start_ns = 0
        self.test_start_ns = 0
        self.expects: list[tuple[str, ExpectBlock]] = []
        """``expect_block()`` contexts of the test, with the phase that opened them."""

    def floor(self, settings: _Settings) -> float:
        """The shortest block worth keeping for this test."""
        floor = settings.floor(self.threshold)
        if not self.expects:
            return floor
        return min([floor, *(e.threshold for _, e in self.expects)])


@dataclass
class _State:
    settings: _Settings
    token: int
    judge: Judge
    default: _TestSettings
    """The settings of a test without a loopguard marker."""
    marked: dict[str, _TestSettings] = field(default_factory=dict)
    """The settings of the tests that have a loopguard marker, by node id."""
    collected: set[int] = field(default_factory=set)
    """``id()`` of the items whose markers were read at collection (ints: nothing for the
    garbage collector to visit)."""
    current: Optional[_TestState] = None
    verdicts: list[Verdict] = field(default_factory=list)
    fixed: list[tuple[str, str]] = field(default_factory=list)
    written: list[str] = field(default_factory=list)
    reader_off: Optional[str] = None
    """Why stacks are read by taking the GIL although the user did not ask for it."""


_state_key = pytest.StashKey[_State]()


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
    ("sampler", "KIND", SAMPLER_HELP, False),
    ("json", "PATH", JSON_HELP, True),
    ("html", "PATH", HTML_HELP, True),
    ("baseline", "PATH", BASELINE_HELP, True),
)


def pytest_addoption(parser: pytest.Parser) -> None:
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
    env_name = f"LOOPGUARD_{key.upper()}"
    env = os.environ.get(env_name)
    if env is not None:
        return env, env_name, "the environment"
    ini = config.getini(f"loopguard_{key}")
    # An empty ini value means "not set"; an empty CLI or env value is a mistake.
    if ini is not None and str(ini).strip():
        return ini, f"loopguard_{key}", _ini_source(config)
    return None


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


def _settings(config: pytest.Config) -> tuple[_Settings, Judge]:
    threshold, source = DEFAULT_THRESHOLD, "default"
    picked = _pick(config, "threshold")
    if picked is not None:
        value, name, where = picked
        threshold, source = parse_duration(value, name=name, source=where), name
    sampler = config.getoption("loopguard_sampler") or os.environ.get("LOOPGUARD_SAMPLER") or "auto"
    if sampler not in SAMPLERS:
        where = "the command line" if config.getoption("loopguard_sampler") else "the environment"
        raise SettingError(
            f"invalid value for --loopguard-sampler: {sampler!r} (from {where}); "
            f"expected one of {', '.join(SAMPLERS)}"
        )
    s = _Settings(threshold=threshold, threshold_source=source, sampler=sampler)

    picked = _pick(config, "mode")
    if picked is not None:
        value, name, where = picked
        s.mode, s.mode_source = parse_choice(value, MODES, name=name, source=where), name

    picked = _pick(config, "gc")
    if picked is not None:
        value, name, where = picked
        s.gc, s.gc_source = parse_choice(value, GC_CHOICES, name=name, source=where), name

    picked = _pick(config, "cpu_wait")
    if picked is not None:
        value, name, where = picked
        s.cpu_wait = parse_choice(value, CPU_WAIT_CHOICES, name=name, source=where)
        s.cpu_wait_source = name

    picked = _pick(config, "stack")
    if picked is not None:
        value, name, where = picked
        s.stack, s.stack_source = parse_choice(value, STACK_CHOICES, name=name, source=where), name

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


@pytest.hookimpl(trylast=True)
def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", MARKER)
    try:
        settings, judge = _settings(config)
    except SettingError as e:
        raise pytest.UsageError(f"loopguard: {e}") from None
    try:
        token = runtime.acquire(settings.floor(settings.threshold), settings.sampler)
    except RuntimeError as e:
        raise pytest.UsageError(f"loopguard: cannot start the watchdog: {e}") from None
    default = _TestSettings(threshold=settings.threshold, enabled=True, mode=settings.mode)
    state = config.stash[_state_key] = _State(
        settings=settings, token=token, judge=judge, default=default
    )
    state.reader_off = _reader_off(settings)
    if XdistPlugin.needed(config):
        config.pluginmanager.register(XdistPlugin(config, state), XdistPlugin.name)
    if settings.json_path is not None or settings.html_path is not None:
        config.pluginmanager.register(PhaseTimes(state.verdicts), PhaseTimes.name)


def pytest_unconfigure(config: pytest.Config) -> None:
    state = config.stash.get(_state_key, None)
    if state is not None:
        for name in (XdistPlugin.name, PhaseTimes.name):
            plugin = config.pluginmanager.get_plugin(name)
            if plugin is not None:
                config.pluginmanager.unregister(plugin)
        runtime.release(state.token)
        del config.stash[_state_key]


def _reader_off(settings: _Settings) -> Optional[str]:
    """Why the GIL-free stack reader is not in use when the sampler was left to loopguard."""
    if runtime.sampler in ("native", None) or settings.sampler == "gil":
        return None
    return _native.reader_unavailable() or "it could not start"


_LATE_CAPTURE = (
    "a block in C code that holds the GIL (a regex, sorted(), json.dumps(), a C extension) "
    "is seen only when that code returns, so its stack may show a later line"
)


def pytest_report_header(config: pytest.Config) -> list[str]:
    state = config.stash.get(_state_key, None)
    if state is None:
        return []
    s = state.settings
    sampler = runtime.sampler or "?"
    how = (
        "GIL-free stack capture"
        if sampler == "native"
        else "stacks read by taking the GIL (may be late)"
    )
    src = "" if s.threshold_source == "default" else f" (from {s.threshold_source})"
    lines = [f"loopguard: threshold {format_duration(s.threshold)}{src}, {how}"]
    if state.reader_off is not None:
        lines.append(
            f"loopguard: the GIL-free stack reader is off: {state.reader_off}; {_LATE_CAPTURE}"
        )
    extra = []
    if s.mode != "fail":
        extra.append(f"mode {s.mode} (from {s.mode_source})")
    if s.gc != "exclude":
        extra.append(f"garbage collection counts toward blocks (from {s.gc_source})")
    if s.cpu_wait != "exclude":
        extra.append(f"waiting for a CPU counts toward blocks (from {s.cpu_wait_source})")
    elif not runtime.cpu_wait_known:
        extra.append(
            "waiting for a CPU counts toward blocks (this kernel does not report run-queue "
            "time: no /proc/self/task/TID/schedstat)"
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
        judge = state.judge
        n = f" ({len(judge.baseline.sites)} call sites)" if judge.baseline else ""
        extra.append(f"{verb} {relative_path(str(s.baseline_path), config.rootpath)}{n}")
    if s.json_path is not None:
        extra.append(f"JSON report {relative_path(str(s.json_path), config.rootpath)}")
    if extra:
        lines.append("loopguard: " + ", ".join(extra))
    return lines


def _marker_settings(item: pytest.Item, state: _State) -> _TestSettings:
    """The settings of ``item``: the session's, unless loopguard markers change them."""
    marks = list(item.iter_markers("loopguard"))
    if not marks:
        return state.default
    d = state.default
    threshold, enabled, mode, max_lag = d.threshold, d.enabled, d.mode, d.max_lag
    where = f"@pytest.mark.loopguard on {item.nodeid}"
    allow: list[AllowPattern] = []
    # Closest marker wins: iter_markers yields the function's own first.
    for mark in reversed(marks):
        if mark.args:
            raise pytest.UsageError(
                f"loopguard: {item.nodeid}: @pytest.mark.loopguard takes keyword arguments only "
                f"(threshold=..., enabled=..., mode=..., allow=...), got positional "
                f"{mark.args!r}"
            )
        unknown = set(mark.kwargs) - _MARKER_ARGS
        if unknown:
            raise pytest.UsageError(
                f"loopguard: {item.nodeid}: unknown @pytest.mark.loopguard argument(s) "
                f"{', '.join(sorted(unknown))}; expected {', '.join(sorted(_MARKER_ARGS))}"
            )
        try:
            if "threshold" in mark.kwargs:
                threshold = parse_duration(mark.kwargs["threshold"], name="threshold", source=where)
            if "mode" in mark.kwargs:
                mode = parse_choice(mark.kwargs["mode"], MODES, name="mode", source=where)
            if "max_lag" in mark.kwargs:
                max_lag = parse_duration(mark.kwargs["max_lag"], name="max_lag", source=where)
            if "allow" in mark.kwargs:
                value = mark.kwargs["allow"]
                patterns = [value] if isinstance(value, str) else value
                if not isinstance(patterns, (list, tuple)):
                    raise SettingError(
                        f"invalid value for allow: {value!r} (from {where}); expected a list "
                        f"of patterns: {ALLOW_HELP}"
                    )
                allow.extend(parse_allow(p, source=where) for p in patterns)
        except SettingError as e:
            raise pytest.UsageError(f"loopguard: {e}") from None
        if "enabled" in mark.kwargs:
            value = mark.kwargs["enabled"]
            if not isinstance(value, bool):
                raise pytest.UsageError(
                    f"loopguard: invalid value for enabled: {value!r} (from "
                    f"{where}); expected True or False"
                )
            enabled = value
    return _TestSettings(threshold, enabled, mode, tuple(allow), max_lag)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Check every loopguard marker now (a mistake is a usage error before any test runs) and
    keep the settings of the tests they change; other tests need nothing kept."""
    state = config.stash.get(_state_key, None)
    if state is None:
        return
    for item in items:
        ts = _marker_settings(item, state)
        if ts is not state.default:
            state.marked[item.nodeid] = ts
    # Items stay alive for the whole session (session.items), so their ids stay theirs.
    state.collected.update(map(id, items))


def _settings_of(state: _State, item: pytest.Item) -> _TestSettings:
    """The settings of ``item``: those read at collection (nothing is kept for a test without
    markers: whatever is kept per test, even in its stash, is one more object for every
    garbage collection to visit), or read now for an item added later."""
    ts = state.marked.get(item.nodeid)
    if ts is None:
        if id(item) in state.collected:
            return state.default
        ts = _marker_settings(item, state)
        if ts is not state.default:
            state.marked[item.nodeid] = ts
    return ts


def _test_state(item: pytest.Item, *, new: bool = False) -> Optional[tuple[_State, _TestState]]:
    """The state of ``item``, the test that is running; ``new``: it starts (again) now."""
    state = item.config.stash.get(_state_key, None)
    if state is None:
        return None
    ts = state.current
    if new or ts is None or ts.item is not item:
        if ts is not None:
            _forget_samples(ts)
        ts = state.current = _TestState(item, _settings_of(state, item))
    return state, ts


def _forget_samples(ts: _TestState) -> None:
    """Drop the stack samples of a finished test's blocks: its reports are made, and the
    session keeps only what the summary and the reports show (a few KB less per block)."""
    for verdicts in ts.verdicts.values():
        for v in verdicts:
            v.event.samples = []


def _enter_phase(item: pytest.Item, phase: str) -> Optional[tuple[_State, _TestState]]:
    found = _test_state(item, new=phase == "setup")
    if found is None:
        return None
    state, ts = found
    ts.phase = phase
    ts.phase_start_ns = _native.now_ns()
    if phase == "setup":
        ts.test_start_ns = ts.phase_start_ns
        runtime.lag_probing = ts.enabled and ts.max_lag is not None
        runtime.update(state.token, state.settings.floor(ts.threshold))
        runtime.set_raise(state.token, ts.enabled and ts.mode == "raise")
        runtime.check_imports()
    runtime.set_context(make_context(item.nodeid, phase))
    return found


def _leave_phase(
    item: pytest.Item, phase: str, *, warn: bool, found: Optional[tuple[_State, _TestState]]
) -> None:
    """Judge the blocks that began in this phase; in warn mode, emit their warnings."""
    if found is None:
        return
    state, ts = found
    runtime.collect()
    if not runtime.has_events and not ts.expects and ts.max_lag is None:
        ts.verdicts[phase] = []  # the common case: nothing blocked, nothing to check
        return
    # This phase's blocks, and those of the test's earlier phases that ended only now (a loop in
    # another thread still blocked when the earlier phase was reported): they fail this phase.
    events = runtime.take_events(
        lambda e: e.test == item.nodeid and (e.phase == phase or e.phase in ts.verdicts)
    )
    _record_strays(state, current=item.nodeid)
    if not ts.enabled:
        return
    verdicts = []
    for ev in events:
        v = _judge(state, ts, ev, test=item.nodeid, phase=phase)
        if v is None:
            continue
        ev = v.event
        expected = [e for _, e in ts.expects if e.covers(ev)]
        for e in expected:
            e.events.append(ev)
        if expected:
            v.outcome, v.reason = "allowed", "expected by loopguard.expect_block()"
        verdicts.append(v)
    ts.verdicts[phase] = verdicts
    state.verdicts.extend(verdicts)
    if warn:
        for v in verdicts:
            if v.outcome == "warned":
                _warn(item, v)
        for opened_in, expect in ts.expects:
            message = expect.failure() if opened_in == phase else None
            if message:
                pytest.fail(message, pytrace=False)
        if ts.max_lag is not None:
            lag = _lag(ts.phase_start_ns)
            if lag.max > ts.max_lag:
                pytest.fail(
                    f"loopguard: event loop lag {format_duration(lag.max)} exceeded max_lag "
                    f"{format_duration(ts.max_lag)} (from @pytest.mark.loopguard on "
                    f"{item.nodeid}); lag {lag}",
                    pytrace=False,
                )


def _judge(
    state: _State, ts: Union[_TestState, _TestSettings], ev: BlockEvent, *, test: str, phase: str
) -> Optional[Verdict]:
    """The verdict on one block under a test's settings, or None when it is too short to keep."""
    if ev.duration < ts.floor(state.settings):
        return None
    ev = dataclasses.replace(ev, threshold=ts.threshold)
    return state.judge.judge(
        ev, test=test, phase=phase, threshold=ts.threshold, mode=ts.mode, allow=ts.allow
    )


def _record_strays(state: _State, current: Optional[str]) -> None:
    """Record the blocks that no report can carry any more: those of a test that has finished
    (a loop in another thread was still blocked when its last phase was reported) and those
    that began outside any test (during collection, between tests). They are judged as usual
    and kept for the summary and the JSON report; one that would fail is recorded instead."""
    if not runtime.has_events:
        return
    for ev in runtime.take_events(lambda e: e.test != current):
        # Outside any test: the session's settings.
        ts = state.marked.get(ev.test, state.default) if ev.test is not None else state.default
        if not ts.enabled:
            continue
        test, phase = (ev.test, ev.phase or "call") if ev.test is not None else ("", "outside")
        v = _judge(state, ts, ev, test=test, phase=phase)
        if v is None:
            continue
        if v.outcome in ("failed", "warned"):
            v.outcome = "recorded"
            v.reason = (
                "began outside any test" if ev.test is None else "ended after its test had finished"
            )
        state.verdicts.append(v)


def _lag(since_ns: int) -> LagStats:
    return lag_stats([lag for when, lag in list(runtime.lag_log) if when >= since_ns])


@pytest.fixture
def loopguard(request: pytest.FixtureRequest) -> LoopguardFixture:
    """The current test's blocks (``loopguard.events``) and ``loopguard.expect_block()``."""
    found = _test_state(request.node)  # type: ignore[arg-type]
    if found is None:
        pytest.fail("loopguard: the loopguard fixture needs the plugin (-p loopguard)")
    state, ts = found
    nodeid = request.node.nodeid

    def events() -> list[BlockEvent]:
        judged = [v.event for vs in ts.verdicts.values() for v in vs]
        runtime.collect()
        floor = ts.floor(state.settings)
        pending = [
            e for e in runtime.events_between(0, 2**64) if e.test == nodeid and e.duration >= floor
        ]
        return sorted([*judged, *pending], key=lambda e: e.start_ns)

    def register(expect: ExpectBlock) -> None:
        ts.expects.append((ts.phase, expect))
        runtime.update(state.token, ts.floor(state.settings))

    runtime.lag_probing = True
    return LoopguardFixture(nodeid, ts.threshold, events, register, lambda: _lag(ts.test_start_ns))


def _warn(item: pytest.Item, v: Verdict) -> None:
    ev = v.event
    message = f"loopguard: {ev.summary()}"
    if ev.site is not None:
        message += f" at {ev.site}"
        filename, lineno = ev.site.filename, ev.site.lineno
    else:
        filename, lineno = str(item.path), item.reportinfo()[1] or 0
    module = modules.name(filename) or Path(filename).stem
    try:
        warnings.warn_explicit(
            LoopBlockedWarning(message), LoopBlockedWarning, filename, lineno, module
        )
    except LoopBlockedWarning:
        # A warnings filter (-W error::loopguard.LoopBlockedWarning, filterwarnings) made
        # it an error: the test fails as in mode fail, with the full report.
        v.outcome = "failed"
        v.reason = "LoopBlockedWarning turned into an error by a warnings filter"


def _phase(item: pytest.Item, phase: str) -> Generator[None, Any, Any]:
    """The body of the three phase wrappers: judge the phase's blocks once it has run."""
    # A failure raised by another plugin's hook passes through here: not ours to show.
    __tracebackhide__ = True
    found = _enter_phase(item, phase)
    try:
        result = yield
    except BaseException:
        _leave_phase(item, phase, warn=False, found=found)
        raise
    _leave_phase(item, phase, warn=True, found=found)
    return result


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, Any, Any]:
    __tracebackhide__ = True
    return (yield from _phase(item, "setup"))


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, Any, Any]:
    __tracebackhide__ = True
    return (yield from _phase(item, "call"))


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_teardown(
    item: pytest.Item, nextitem: Optional[pytest.Item]
) -> Generator[None, Any, Any]:
    __tracebackhide__ = True
    try:
        return (yield from _phase(item, "teardown"))
    finally:
        runtime.set_context("")
        runtime.lag_probing = False


class _LoopguardRepr:
    """A failure report that pytest prints like a traceback and summarises in one line."""

    def __init__(self, events: list[BlockEvent], stack: str = "short") -> None:
        self.events = events
        self.stack = stack
        self.text = format_events(events, stack=stack)
        first = events[0]
        # pytest's short summary cuts this line to the terminal's width: the duration and
        # the call site come first.
        self.reprcrash = _Crash(first.headline(more=len(events) - 1), first)

    def toterminal(self, tw: Any) -> None:
        for i, ev in enumerate(self.events):
            if i:
                tw.line("")
            lines = format_event(ev, index=i, total=len(self.events), stack=self.stack)
            for j, line in enumerate(lines):
                if j == 0:
                    tw.line(line, red=True, bold=True)
                elif line.startswith("  >"):
                    tw.line(line, bold=True)
                else:
                    tw.line(line)

    def __str__(self) -> str:
        return self.text


class _Crash:
    def __init__(self, message: str, ev: BlockEvent) -> None:
        self.message = message
        self.path = ev.site.filename if ev.site else ""
        self.lineno = ev.site.lineno if ev.site else 0


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    state = item.config.stash.get(_state_key, None)
    ts = state.current if state is not None else None
    # The phase just judged is the current test's; no verdict is the common case.
    verdicts = ts.verdicts.get(call.when) if ts is not None and ts.item is item else None
    if not verdicts:
        return report
    failing = [v for v in verdicts if v.outcome == "failed"]
    if not failing:
        return report
    if report.skipped or hasattr(report, "wasxfail"):
        for v in failing:
            v.outcome, v.reason = "recorded", "the test was skipped or xfailed"
        return report
    events = [v.event for v in failing]
    worst = max(events, key=lambda e: e.duration)
    # JUnit XML (--junitxml) shows these as <property> elements of the test case. It reads
    # them from the teardown report, which copies the item's: so both get them.
    props = [
        ("loopguard_duration_ms", round(worst.duration * 1000.0)),
        ("loopguard_blocks", len(events)),
    ]
    if worst.site is not None:
        props.insert(0, ("loopguard_site", str(worst.site)))
    report.user_properties.extend(props)
    item.user_properties.extend(props)
    stack = "full" if item.config.option.verbose >= 2 else state.settings.stack
    text = format_events(events, stack=stack)
    if report.passed:
        report.outcome = "failed"
        report.longrepr = _LoopguardRepr(events, stack)
    else:
        title = f"loopguard: blocked event loop ({call.when})"
        report.sections.append((title, text))
    attach_to_pytest_html(report, text)
    return report


@pytest.hookimpl(tryfirst=True)  # before the xdist worker ships its unreported verdicts
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Write the baseline and the JSON report (before the terminal summary is printed)."""
    config = session.config
    state = config.stash.get(_state_key, None)
    if state is None:
        return
    if runtime.active:
        runtime.collect(everything=True)
        _record_strays(state, current=None)
    if hasattr(config, "workerinput"):
        return
    s = state.settings
    root = config.rootpath
    seen = {v.key for v in state.verdicts if v.key is not None}
    if state.judge.baseline is not None:
        state.fixed = sorted(state.judge.baseline.sites - seen)
    if s.baseline_update and s.baseline_path is not None:
        if exitstatus == pytest.ExitCode.INTERRUPTED:
            state.written.append(
                f"baseline not updated: the run was interrupted ({s.baseline_path})"
            )
        else:
            sites = [v.key for v in state.verdicts if v.over_threshold and v.key is not None]
            write_atomically(s.baseline_path, Baseline.dumps(sites))  # type: ignore[arg-type]
            n = len(set(sites))
            state.written.append(
                f"baseline written to {s.baseline_path} ({n} call site{'s' * (n != 1)})"
            )
    if s.json_path is not None or s.html_path is not None:
        from . import __version__

        phases = config.pluginmanager.get_plugin(PhaseTimes.name)
        data = report_data(
            state.verdicts,
            root=root,
            settings=s.as_json(root),
            fixed=state.fixed,
            loopguard_version=__version__,
            pytest_version=pytest.__version__,
            sampler=runtime.sampler,
            run=new_run(interrupted=exitstatus == pytest.ExitCode.INTERRUPTED),
            phases=phases.phases if phases is not None else None,
        )
        if s.html_path is not None:
            data["events"] = list(data["events"])  # read twice
        if s.json_path is not None:
            write_atomically(s.json_path, report_chunks(data))
            state.written.append(f"JSON report written to {s.json_path}")
        if s.html_path is not None:
            from ._html import render

            write_atomically(s.html_path, render(data))
            state.written.append(f"HTML report written to {s.html_path}")


def _cwd_relative(config: pytest.Config, nodeid: str) -> str:
    """``nodeid`` as pytest prints it in FAILED lines: relative to the invocation directory."""
    path, sep, rest = nodeid.partition("::")
    full = config.rootpath / path
    rel = os.path.relpath(full, config.invocation_params.dir)
    return nodeid if rel.startswith("..") else rel.replace(os.sep, "/") + sep + rest


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    state = config.stash.get(_state_key, None)
    if state is None:
        return
    tr = terminalreporter
    verdicts = state.verdicts
    if verdicts or state.fixed:
        failed = any(v.outcome == "failed" for v in verdicts)
        tr.section(
            "loopguard: blocking hotspots", sep="=", red=failed, yellow=not failed, bold=True
        )
        if verdicts:
            label = functools.partial(_cwd_relative, config)
            for text, markup in summary_lines(verdicts, config.option.verbose, label):
                tr.line(text, **markup)
        if state.fixed:
            for text in fixed_lines(state.fixed):
                tr.line(text, green=True)
    late = sum(1 for v in verdicts if v.event.late)
    if late and state.reader_off is not None:
        tr.write_line(
            f"loopguard: {late} block{'s were' if late != 1 else ' was'} captured late, by "
            f"taking the GIL: the GIL-free stack reader is off ({state.reader_off})",
            yellow=True,
        )
    for text in state.written:
        tr.write_line(f"loopguard: {text}")
    if os.environ.get("GITHUB_ACTIONS") == "true" and verdicts:
        for text in annotations(
            verdicts, root=config.rootpath, workspace=os.environ.get("GITHUB_WORKSPACE")
        ):
            tr.write_line(text)
