"""The pytest plugin: ``pytest -p loopguard``."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Optional

import pytest

from ._events import BlockEvent, format_event, format_events, make_context
from ._guard import DEFAULT_THRESHOLD, MODES
from ._runtime import runtime
from ._settings import DURATION_HELP, SettingError, format_duration, parse_duration
from ._xdist import XdistPlugin

__all__ = [
    "pytest_addoption",
    "pytest_collection_modifyitems",
    "pytest_configure",
    "pytest_report_header",
    "pytest_runtest_call",
    "pytest_runtest_makereport",
    "pytest_runtest_setup",
    "pytest_runtest_teardown",
    "pytest_terminal_summary",
    "pytest_unconfigure",
]

THRESHOLD_HELP = (
    f"fail a test whose event loop is blocked for longer than this: {DURATION_HELP}; default 100ms"
)
SAMPLER_HELP = (
    "how stacks are captured: auto (GIL-free where supported, else by taking the GIL), "
    "native (GIL-free or fail) or gil"
)
SAMPLERS = ("auto", "native", "gil")
MODE_HELP = (
    "fail: fail the test after it ran (default); raise: also raise loopguard.LoopBlockedError "
    "inside the blocked code, at the blocking line"
)
MARKER = (
    "loopguard(threshold=None, enabled=True, mode=None): fail the test if an event loop is "
    "blocked for longer than threshold (e.g. '50ms', 0.05); enabled=False turns loopguard off "
    "for the test; mode='raise' raises LoopBlockedError at the blocking line"
)
_MARKER_ARGS = {"threshold", "enabled", "mode"}


@dataclass
class _Settings:
    threshold: float
    threshold_source: str
    sampler: str
    mode: str


@dataclass
class _TestState:
    threshold: float
    enabled: bool
    mode: str
    events: dict[str, list[BlockEvent]] = field(default_factory=dict)


@dataclass
class _State:
    settings: _Settings
    token: int
    tests: dict[str, _TestState] = field(default_factory=dict)
    all_events: list[BlockEvent] = field(default_factory=list)
    failed_events: list[BlockEvent] = field(default_factory=list)


_state_key = pytest.StashKey[_State]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("loopguard", "fail tests that block the asyncio event loop")
    group.addoption(
        "--loopguard-threshold",
        dest="loopguard_threshold",
        metavar="DURATION",
        default=None,
        help=THRESHOLD_HELP + " (env LOOPGUARD_THRESHOLD, ini loopguard_threshold)",
    )
    group.addoption(
        "--loopguard-sampler",
        dest="loopguard_sampler",
        metavar="KIND",
        default=None,
        help=SAMPLER_HELP + " (env LOOPGUARD_SAMPLER)",
    )
    group.addoption(
        "--loopguard-mode",
        dest="loopguard_mode",
        metavar="MODE",
        default=None,
        help=MODE_HELP + " (env LOOPGUARD_MODE, ini loopguard_mode)",
    )
    parser.addini("loopguard_threshold", THRESHOLD_HELP, default=None)
    parser.addini("loopguard_mode", MODE_HELP, default=None)


def _settings(config: pytest.Config) -> _Settings:
    candidates = [
        (config.getoption("loopguard_threshold"), "--loopguard-threshold", "the command line"),
        (os.environ.get("LOOPGUARD_THRESHOLD"), "LOOPGUARD_THRESHOLD", "the environment"),
        (config.getini("loopguard_threshold"), "loopguard_threshold", _ini_source(config)),
    ]
    threshold, source = DEFAULT_THRESHOLD, "default"
    for value, name, where in candidates:
        # An empty ini value means "not set"; an empty CLI or env value is a mistake.
        if value is None or (name == "loopguard_threshold" and not str(value).strip()):
            continue
        threshold, source = parse_duration(value, name=name, source=where), name
        break
    sampler = config.getoption("loopguard_sampler") or os.environ.get("LOOPGUARD_SAMPLER") or "auto"
    if sampler not in SAMPLERS:
        where = "the command line" if config.getoption("loopguard_sampler") else "the environment"
        raise SettingError(
            f"invalid value for --loopguard-sampler: {sampler!r} (from {where}); "
            f"expected one of {', '.join(SAMPLERS)}"
        )
    mode = "fail"
    for value, name, where in (
        (config.getoption("loopguard_mode"), "--loopguard-mode", "the command line"),
        (os.environ.get("LOOPGUARD_MODE"), "LOOPGUARD_MODE", "the environment"),
        (config.getini("loopguard_mode"), "loopguard_mode", _ini_source(config)),
    ):
        if value is None or (name == "loopguard_mode" and not str(value).strip()):
            continue
        mode = _check_mode(value, name, where)
        break
    return _Settings(threshold=threshold, threshold_source=source, sampler=sampler, mode=mode)


def _check_mode(value: object, name: str, where: str) -> str:
    text = value.strip() if isinstance(value, str) else value
    if text not in MODES:
        raise SettingError(
            f"invalid value for {name}: {value!r} (from {where}); expected one of "
            f"{', '.join(MODES)}"
        )
    return str(text)


def _ini_source(config: pytest.Config) -> str:
    return f"the config file {config.inipath}" if config.inipath else "the config file"


@pytest.hookimpl(trylast=True)
def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", MARKER)
    try:
        settings = _settings(config)
    except SettingError as e:
        raise pytest.UsageError(f"loopguard: {e}") from None
    try:
        token = runtime.acquire(settings.threshold, settings.sampler)
    except RuntimeError as e:
        raise pytest.UsageError(f"loopguard: cannot start the watchdog: {e}") from None
    state = config.stash[_state_key] = _State(settings=settings, token=token)
    config.pluginmanager.register(XdistPlugin(config, state), XdistPlugin.name)


def pytest_unconfigure(config: pytest.Config) -> None:
    state = config.stash.get(_state_key, None)
    if state is not None:
        xdist_plugin = config.pluginmanager.get_plugin(XdistPlugin.name)
        if xdist_plugin is not None:
            config.pluginmanager.unregister(xdist_plugin)
        runtime.release(state.token)
        del config.stash[_state_key]


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
    return [f"loopguard: threshold {format_duration(s.threshold)}{src}, {how}"]


def _marker_settings(item: pytest.Item, default: float, mode: str) -> tuple[float, bool, str]:
    threshold, enabled = default, True
    # Closest marker wins: iter_markers yields the function's own first.
    for mark in reversed(list(item.iter_markers("loopguard"))):
        if mark.args:
            raise pytest.UsageError(
                f"loopguard: {item.nodeid}: @pytest.mark.loopguard takes keyword arguments only "
                f"(threshold=..., enabled=..., mode=...), got positional {mark.args!r}"
            )
        unknown = set(mark.kwargs) - _MARKER_ARGS
        if unknown:
            raise pytest.UsageError(
                f"loopguard: {item.nodeid}: unknown @pytest.mark.loopguard argument(s) "
                f"{', '.join(sorted(unknown))}; expected {', '.join(sorted(_MARKER_ARGS))}"
            )
        if "threshold" in mark.kwargs:
            try:
                threshold = parse_duration(
                    mark.kwargs["threshold"],
                    name="threshold",
                    source=f"@pytest.mark.loopguard on {item.nodeid}",
                )
            except SettingError as e:
                raise pytest.UsageError(f"loopguard: {e}") from None
        if "enabled" in mark.kwargs:
            value = mark.kwargs["enabled"]
            if not isinstance(value, bool):
                raise pytest.UsageError(
                    f"loopguard: invalid value for enabled: {value!r} (from "
                    f"@pytest.mark.loopguard on {item.nodeid}); expected True or False"
                )
            enabled = value
        if "mode" in mark.kwargs:
            try:
                mode = _check_mode(
                    mark.kwargs["mode"], "mode", f"@pytest.mark.loopguard on {item.nodeid}"
                )
            except SettingError as e:
                raise pytest.UsageError(f"loopguard: {e}") from None
    return threshold, enabled, mode


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    state = config.stash.get(_state_key, None)
    if state is None:
        return
    for item in items:
        state.tests[item.nodeid] = _new_test_state(state, item)


def _new_test_state(state: _State, item: pytest.Item) -> _TestState:
    s = state.settings
    threshold, enabled, mode = _marker_settings(item, s.threshold, s.mode)
    return _TestState(threshold=threshold, enabled=enabled, mode=mode)


def _test_state(item: pytest.Item) -> Optional[tuple[_State, _TestState]]:
    state = item.config.stash.get(_state_key, None)
    if state is None:
        return None
    ts = state.tests.get(item.nodeid)
    if ts is None:
        ts = state.tests[item.nodeid] = _new_test_state(state, item)
    return state, ts


def _enter_phase(item: pytest.Item, phase: str) -> None:
    found = _test_state(item)
    if found is None:
        return
    state, ts = found
    if phase == "setup":
        runtime.update(state.token, ts.threshold)
        runtime.set_raise(state.token, ts.enabled and ts.mode == "raise")
    runtime.set_context(make_context(item.nodeid, phase))


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> Any:
    _enter_phase(item, "setup")
    return (yield)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_call(item: pytest.Item) -> Any:
    _enter_phase(item, "call")
    return (yield)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: Optional[pytest.Item]) -> Any:
    _enter_phase(item, "teardown")
    try:
        return (yield)
    finally:
        runtime.set_context("")


class _LoopguardRepr:
    """A failure report that pytest prints like a traceback and summarises in one line."""

    def __init__(self, events: list[BlockEvent]) -> None:
        self.events = events
        self.text = format_events(events)
        first = events[0]
        msg = f"loopguard: {first.summary()}"
        if first.site is not None:
            msg += f" at {first.site}"
        if len(events) > 1:
            msg += f" (and {len(events) - 1} more)"
        self.reprcrash = _Crash(msg, first)

    def toterminal(self, tw: Any) -> None:
        for i, ev in enumerate(self.events):
            if i:
                tw.line("")
            for j, line in enumerate(format_event(ev, index=i, total=len(self.events))):
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
    found = _test_state(item)
    if found is None:
        return report
    state, ts = found
    runtime.collect()
    ctx_events = runtime.take_events(lambda e: e.test == item.nodeid and e.phase == call.when)
    if not ts.enabled:
        return report
    state.all_events.extend(ctx_events)
    failing = [e for e in ctx_events if e.duration >= ts.threshold]
    if not failing:
        return report
    ts.events[call.when] = failing
    if report.skipped or hasattr(report, "wasxfail"):
        return report
    state.failed_events.extend(failing)
    if report.passed:
        report.outcome = "failed"
        report.longrepr = _LoopguardRepr(failing)
    else:
        title = f"loopguard: blocked event loop ({call.when})"
        report.sections.append((title, format_events(failing)))
    return report


def _cwd_relative(config: pytest.Config, nodeid: str) -> str:
    """``nodeid`` as pytest prints it in FAILED lines: relative to the invocation directory."""
    path, sep, rest = nodeid.partition("::")
    full = config.rootpath / path
    rel = os.path.relpath(full, config.invocation_params.dir)
    return nodeid if rel.startswith("..") else rel.replace(os.sep, "/") + sep + rest


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    state = config.stash.get(_state_key, None)
    if state is None or not state.failed_events:
        return
    tr = terminalreporter
    tr.section("loopguard: blocked event loops", sep="=", red=True)
    for ev in state.failed_events:
        where = str(ev.site) if ev.site else "(ended before its stack was sampled)"
        test = _cwd_relative(config, ev.test) if ev.test else "?"
        tr.line(f"{format_duration(ev.duration):>9}  {where}  [{test} ({ev.phase})]")
