"""The pytest plugin: ``pytest -p loopguard`` (the package lists this module in its
``pytest_plugins``).

This module is the hooks and the ``loopguard`` fixture, nothing else: settings are resolved in
:mod:`loopguard._settings` and kept in :mod:`loopguard._state`, what a block means (and whether a
phase fails for an ``expect_block()`` or ``max_lag``) is decided in :mod:`loopguard._judge`,
whose decisions the hooks only apply, a failing test's report is written by
:mod:`loopguard._failure`, and what the session is told, by :mod:`loopguard._report`.
"""

from __future__ import annotations

import functools
import os
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import pytest

from . import _interpreter, _native
from ._errors import LoopBlockedWarning, SettingError
from ._runtime import FLUSH_TIMEOUT, runtime
from ._settings import (
    MARKER,
    TestSettings,
    add_options,
    header_lines,
    marker_settings,
    resolve,
)
from ._state import PHASES_PLUGIN, XDIST_PLUGIN, State, TestState, is_worker, xdist_needed

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ._events import BlockEvent
    from ._fixture import ExpectBlock, LagStats, LoopguardFixture
    from ._judge import Verdict

# What a run needs only when something happened (a block, a report to write, xdist) is imported
# then: the failure text, the reports, the HTML page, the fixture.

__all__ = [
    "loopguard",
    "pytest_addoption",
    "pytest_collection_modifyitems",
    "pytest_configure",
    "pytest_report_header",
    "pytest_runtest_makereport",
    "pytest_runtest_setup",
    "pytest_sessionfinish",
    "pytest_terminal_summary",
    "pytest_unconfigure",
]

_state_key = pytest.StashKey[State]()
# The session's threshold when loopguard is inactive (see loopguard._interpreter): the plugin
# then checks its settings and says why it watches nothing, and starts nothing.
_inactive_key = pytest.StashKey[float]()
# The state of the test that ran last (its ``state`` is its session's): each phase of a test,
# and the next test of the same session, find them here rather than in ``config.stash`` (whose
# lookups are calls of pytest's, at every phase). A session's state is in ``config.stash`` all
# the same: an in-process session inside a test has its own.
_last: Optional[TestState] = None
# How many modules were imported when the last test started (``runtime.check_imports`` looks
# again only when there are more or fewer).
_modules_seen = 0


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser)


@pytest.hookimpl(trylast=True)
def pytest_configure(config: pytest.Config) -> None:
    if config.pluginmanager.is_blocked("loopguard"):
        # `-p loopguard -p no:loopguard`: pytest unregistered the package, not this module.
        config.pluginmanager.unregister(sys.modules[__name__])
        return
    config.addinivalue_line("markers", MARKER)
    try:
        settings, judge = resolve(config)
    except SettingError as e:
        raise pytest.UsageError(f"loopguard: {e}") from None
    if _interpreter.INACTIVE is not None:
        config.stash[_inactive_key] = settings.threshold
        return
    try:
        token = runtime.acquire(settings.floor(settings.threshold), settings.sampler)
    except RuntimeError as e:
        raise pytest.UsageError(f"loopguard: cannot start the watchdog: {e}") from None
    _native.set_native_stacks(settings.native == "on")
    default = TestSettings(
        threshold=settings.threshold, enabled=True, mode=settings.mode, native=settings.native
    )
    state = config.stash[_state_key] = State(
        settings=settings, token=token, judge=judge, default=default
    )
    # Why the GIL-free stack reader is not in use when the sampler was left to loopguard.
    if runtime.sampler not in ("native", None) and settings.sampler != "gil":
        state.reader_off = _native.reader_unavailable() or "it could not start"
    if xdist_needed(config):
        from ._xdist import XdistPlugin

        config.pluginmanager.register(XdistPlugin(config, state), XDIST_PLUGIN)
    # The reports are written where the reports are logged: in a session without xdist, or by
    # its controller (a worker keeps only the verdicts it has not shipped yet).
    reports = settings.json_path is not None or settings.html_path is not None
    if reports and not is_worker(config):
        from ._phases import PhaseTimes

        config.pluginmanager.register(PhaseTimes(state.verdicts), PHASES_PLUGIN)


def pytest_unconfigure(config: pytest.Config) -> None:
    global _last
    state = config.stash.get(_state_key, None)
    if state is not None:
        if _last is not None and _last.state is state:
            _last = None
        for name in (XDIST_PLUGIN, PHASES_PLUGIN):
            plugin = config.pluginmanager.get_plugin(name)
            if plugin is not None:
                config.pluginmanager.unregister(plugin)
        runtime.release(state.token)
        _native.set_native_stacks(False)
        del config.stash[_state_key]


def pytest_report_header(config: pytest.Config) -> list[str]:
    state = config.stash.get(_state_key, None)
    if state is None:
        if _inactive_key not in config.stash:
            return []
        from . import _inactive

        return [_inactive.header()]
    return header_lines(
        state.settings,
        baseline=state.judge.baseline,
        reader_off=state.reader_off,
        root=config.rootpath,
        sampler=runtime.sampler,
        cpu_wait_known=runtime.cpu_wait_known,
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Check every loopguard marker now (a mistake is a usage error before any test runs) and
    keep the settings of the tests they change; other tests need nothing kept."""
    state = config.stash.get(_state_key, None)
    if state is None:
        return
    marked_above: dict[int, bool] = {}
    for item in items:
        # The common case, inline (a call per item is a call per test): no marker on the item,
        # none above it (each node above looked at once for all the items under it).
        for mark in item.own_markers:
            if getattr(mark, "name", None) == "loopguard":
                break
        else:
            parent = item.parent
            if parent is None:
                continue
            above = marked_above.get(id(parent))
            if above is None:
                above = _marked_above(parent, marked_above)
            if not above:
                continue  # the session's settings, nothing to read or keep
        try:
            ts = marker_settings(item, state.default)
        except SettingError as e:
            raise pytest.UsageError(f"loopguard: {e}") from None
        if ts is not state.default:
            state.marked[item.nodeid] = ts
    # Items stay alive for the whole session (session.items), so their ids stay theirs.
    state.collected.update(map(id, items))


def _marked_above(node: Any, marked_above: dict[int, bool]) -> bool:
    """Whether ``node`` or a node above it carries a loopguard marker (where ``iter_markers``
    looks), remembered in ``marked_above`` by ``id()`` of each node looked at."""
    chain = []
    while node is not None and id(node) not in marked_above:
        chain.append(node)
        node = node.parent
    found = marked_above[id(node)] if node is not None else False
    for node in reversed(chain):
        found = found or _carries_marker(node)
        marked_above[id(node)] = found
    return found


def _carries_marker(node: Any) -> bool:
    for mark in node.own_markers:
        if getattr(mark, "name", None) == "loopguard":
            return True
    return False


def _test_state(item: pytest.Item) -> Optional[TestState]:
    """The state of ``item``, the test that is running (or has just run), or ``None`` when its
    session has no loopguard state."""
    global _last
    last = _last
    if last is not None and last.item is item:
        return last  # a later phase of the test that ran last: the common case
    if last is not None and last.item.config is item.config:
        state = last.state  # the next test of the same session
    else:
        found = item.config.stash.get(_state_key, None)
        if found is None:
            return None
        state = found
    ts = state.current
    if ts is None or ts.item is not item:
        ts = _new_test(state, item)
    _last = ts
    return ts


def _new_test(state: State, item: pytest.Item) -> TestState:
    """The state of ``item``, which starts (again) now."""
    global _last
    ts = state.current
    if ts is not None and ts.judged:
        _forget_samples(ts)
    if not state.marked and id(item) in state.collected:
        settings = state.default  # the common case: no test has a marker
    else:
        settings = _settings_of(state, item)
    ts = state.current = _last = TestState(state, item, settings)
    return ts


def _settings_of(state: State, item: pytest.Item) -> TestSettings:
    """The settings of ``item`` when some test has a marker, or ``item`` was added after
    collection."""
    try:
        return state.settings_of(item)
    except SettingError as e:
        raise pytest.UsageError(f"loopguard: {e}") from None


def _forget_samples(ts: TestState) -> None:
    """Drop the stack samples of a finished test's blocks: its reports are made, and the
    session keeps only what the summary and the reports show (a few KB less per block)."""
    for verdicts in ts.verdicts.values():
        for v in verdicts:
            v.event.samples = []


def _leave_phase(
    ts: TestState, item: pytest.Item, call: pytest.CallInfo[None], raw: Optional[str]
) -> None:
    """Judge the blocks that began in phase ``call.when`` once it has run (``raw``: the events
    the watchdog has just finished, see ``runtime.collect``), and apply the judge's ruling. A
    phase that ran to its end (no exception) emits its warnings, and an ``expect_block()`` or
    ``max_lag`` may fail it: the phase then fails as if it had raised that failure
    (``call.excinfo``, which every report hook reads)."""
    phase = call.when
    state = ts.state
    if raw is not None:
        runtime.add(raw)
    if not runtime.events and not ts.expects and ts.max_lag is None:
        ts.verdicts[phase] = ()  # nothing blocked, nothing to check
        return
    ts.judged = True
    # This phase's blocks, and those of the test's earlier phases that ended only now (a loop in
    # another thread still blocked when the earlier phase was reported): they fail this phase.
    events = runtime.take_events(
        lambda e: e.test == ts.nodeid and (e.phase == phase or e.phase in ts.verdicts)
    )
    _record_strays(state, current=ts.nodeid)
    if not ts.enabled:
        return
    finished = call.excinfo is None
    ruling = state.judge.judge_phase(
        events,
        test=ts.nodeid,
        phase=phase,
        threshold=ts.threshold,
        mode=ts.mode,
        allow=ts.allow,
        floor=ts.floor(state.settings),
        expects=ts.expects,
        now_ns=_native.now_ns(),
        max_lag=ts.max_lag,
        lag=lambda: _lag(ts.phase_start_ns),
        warn=functools.partial(_warn, item),
        finished=finished,
    )
    ts.verdicts[phase] = ruling.verdicts
    state.verdicts.extend(ruling.verdicts)
    for expect, ev in ruling.expected:
        expect.events.append(ev)
    if ruling.failures:
        try:
            pytest.fail(ruling.failures[0], pytrace=False)
        except pytest.fail.Exception:
            call.excinfo = pytest.ExceptionInfo.from_current()


def _record_strays(state: State, current: Optional[str]) -> None:
    """Record the blocks that no report can carry any more: those of a test that has finished
    (a loop in another thread was still blocked when its last phase was reported) and those
    that began outside any test (during collection, between tests), as the judge decides
    (:meth:`Judge.judge_stray`), for the summary and the JSON report."""
    if not runtime.events:
        return
    for ev in runtime.take_events(lambda e: e.test != current):
        ts = state.settings_of_test(ev.test)
        v = state.judge.judge_stray(
            ev,
            threshold=ts.threshold,
            mode=ts.mode,
            allow=ts.allow,
            enabled=ts.enabled,
            floor=ts.floor(state.settings),
        )
        if v is not None:
            state.verdicts.append(v)


def _lag(since_ns: int) -> LagStats:
    from ._fixture import lag_stats

    return lag_stats([lag for when, lag in list(runtime.lag_log) if when >= since_ns])


@pytest.fixture
def loopguard(request: pytest.FixtureRequest) -> LoopguardFixture:
    """The current test's blocks (``loopguard.events``) and ``loopguard.expect_block()``."""
    ts = _test_state(request.node)  # type: ignore[arg-type]
    if ts is None and _inactive_key in request.config.stash:
        from . import _inactive

        return _inactive.LoopguardFixture(request.node.nodeid, request.config.stash[_inactive_key])
    if ts is None:
        pytest.fail("loopguard: the loopguard fixture needs the plugin (-p loopguard)")
    state = ts.state
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
        ts.expects = (*ts.expects, (ts.phase, expect))
        state.applied = None  # the next test sets its own threshold again
        runtime.update(state.token, ts.floor(state.settings))

    from ._fixture import LoopguardFixture

    runtime.probe_lag(True)
    return LoopguardFixture(nodeid, ts.threshold, events, register, lambda: _lag(ts.test_start_ns))


def _warn(item: pytest.Item, ev: BlockEvent) -> bool:
    """Emit the warning of a block judged in mode warn, at its call site; False when a warnings
    filter (-W error::loopguard.LoopBlockedWarning, filterwarnings) made it an error."""
    from ._failure import summary
    from ._files import modules

    message = f"loopguard: {summary(ev)}"
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
        return False
    return True


# A test starts in a plain hook (setup); each phase's blocks are judged by the report hook,
# which, once the report is made, starts the phase pytest runs next (call if setup passed,
# else teardown). pytest calls a hook implementation at a few thousand instructions, a wrapper
# at several times that: a hook of its own per phase would cost every test more than all the
# rest of loopguard's work on it. For the same reason a test's start is one native call, and
# a phase's end, when nothing blocked, one more (``_native.advance``).

_NO_TEST, _CALL, _TEARDOWN = 0, 2, 3
"""What runs next, as ``_native.set_phase`` and ``_native.advance`` number it (1 is setup)."""


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    global _modules_seen
    last = _last
    if last is not None and last.item.config is item.config:
        state = last.state  # the next test of the same session: the common case
    else:
        state = item.config.stash.get(_state_key, None)
        if state is None:
            return
    ts = _new_test(state, item)
    settings = ts.settings
    if state.applied is not settings:
        # Other settings than the last test's (or the last test's fixture changed the
        # watchdog's threshold: it forgot what was applied).
        state.applied = settings
        runtime.update(state.token, state.settings.floor(settings.threshold))
        runtime.set_raise(state.token, ts.enabled and settings.mode == "raise")
    probe = ts.enabled and ts.max_lag is not None
    if probe is not runtime.lag_probing:
        runtime.probe_lag(probe)
    if len(sys.modules) != _modules_seen:
        # Something was imported since the last test: uvloop or trio, perhaps, in a way the
        # import hook missed.
        _modules_seen = len(sys.modules)
        runtime.check_imports()
    ts.phase_start_ns = ts.test_start_ns = _native.begin_test(
        ts.nodeid, ts.enabled and settings.native == "on"
    )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    when = call.when
    ts = _last
    if ts is None or ts.item is not item:
        state = item.config.stash.get(_state_key, None)
        ts = state.current if state is not None else None
        if ts is None or ts.item is not item:
            return (yield)  # not a test that ran here
    if when not in ts.verdicts and (runtime.events or ts.expects or ts.max_lag is not None):
        # Something to check that may fail the phase as if it had raised (``call.excinfo``,
        # which every report hook reads): judged before the report is made.
        _leave_phase(ts, item, call, _native.take(FLUSH_TIMEOUT))
    report: pytest.TestReport = yield
    if when not in ts.verdicts:
        # The common case: nothing was logged before the phase ended. It ends here, with the
        # blocks the watchdog has finished since, if any (none: the next phase has begun).
        phase = _next_phase(item, when, report)
        raw = _native.advance(phase, FLUSH_TIMEOUT)
        if raw is None:
            ts.verdicts[when] = ()
            _started(ts, phase)
            return report
        _leave_phase(ts, item, call, raw)
    verdicts = ts.verdicts.get(when)
    if verdicts and any(v.outcome == "failed" for v in verdicts):
        _fail(ts, item, when, report, verdicts)
    phase = _next_phase(item, when, report)
    _native.set_phase(phase)
    _started(ts, phase)
    return report


def _next_phase(item: pytest.Item, when: str, report: pytest.TestReport) -> int:
    """What pytest runs after phase ``when``, as runtestprotocol decides: the call after a setup
    that passed (unless only the fixtures are set up), the teardown after either, then no
    test."""
    if when == "teardown":
        return _NO_TEST
    if when == "setup" and report.passed and not getattr(item.config.option, "setuponly", False):
        return _CALL
    return _TEARDOWN


def _started(ts: TestState, phase: int) -> None:
    """Phase ``phase`` (see :func:`_next_phase`) of ``ts`` has started, or no test runs until the
    next one starts."""
    if phase == _NO_TEST:
        if runtime.lag_probing:
            runtime.probe_lag(False)
        return
    if phase == _CALL:
        ts.phase = "call"
        if ts.enabled:
            ts.state.guarded += 1
    else:
        ts.phase = "teardown"
    if ts.max_lag is not None:
        ts.phase_start_ns = _native.now_ns()  # read only by the lag check


def _fail(
    ts: TestState,
    item: pytest.Item,
    when: str,
    report: pytest.TestReport,
    verdicts: Sequence[Verdict],
) -> None:
    """Apply the failing verdicts of phase ``when`` to its report: the test fails (or a failing
    phase shows them in a section of its report); a phase pytest reported as skipped or
    xfailed records them instead."""
    state = ts.state
    if report.skipped or hasattr(report, "wasxfail"):
        _not_failing(state, verdicts)  # type: ignore[arg-type]
        return
    from ._failure import FailureRepr, format_events
    from ._html import attach_to_pytest_html

    events = [v.event for v in verdicts if v.outcome == "failed"]
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
        report.longrepr = FailureRepr(events, stack)
    else:
        title = f"loopguard: blocked event loop ({when})"
        report.sections.append((title, text))
    attach_to_pytest_html(report, text)


def _not_failing(state: State, verdicts: list[Verdict]) -> None:
    """The verdicts of a phase that pytest reported as skipped or xfailed, in place: a failing
    block is recorded instead (see :meth:`Judge.not_failing`)."""
    from ._judge import Judge

    index = {id(v): i for i, v in enumerate(state.verdicts)}
    for i, v in enumerate(verdicts):
        final = Judge.not_failing(v)
        if final is not v:
            verdicts[i] = final
            if id(v) in index:
                state.verdicts[index[id(v)]] = final


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
    if is_worker(config):
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
            from ._report import baseline_text, write_atomically

            text, n = baseline_text(state.verdicts)
            write_atomically(s.baseline_path, text)
            state.written.append(
                f"baseline written to {s.baseline_path} ({n} call site{'s' * (n != 1)})"
            )
    if s.json_path is not None or s.html_path is not None:
        from . import __version__
        from ._report import new_run, report_chunks, report_data, write_atomically

        phases = config.pluginmanager.get_plugin(PHASES_PLUGIN)
        data = report_data(
            state.verdicts,
            root=root,
            settings=s.as_json(root),
            fixed=state.fixed,
            loopguard_version=__version__,
            pytest_version=pytest.__version__,
            sampler=runtime.sampler,
            run=new_run(
                interrupted=exitstatus == pytest.ExitCode.INTERRUPTED, guarded=state.guarded
            ),
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
        if _inactive_key in config.stash:
            from . import _inactive

            terminalreporter.write_line(_inactive.header(), yellow=True)
        return
    tr = terminalreporter
    if state.verdicts or state.fixed:
        failed = any(v.outcome == "failed" for v in state.verdicts)
        tr.section(
            "loopguard: blocking hotspots", sep="=", red=failed, yellow=not failed, bold=True
        )
        from ._report import hotspot_lines

        label = functools.partial(_cwd_relative, config)
        for text, markup in hotspot_lines(
            state.verdicts, state.fixed, config.option.verbose, label
        ):
            tr.line(text, **markup)
    if not state.guarded and not is_worker(config) and not config.option.collectonly:
        tr.write_line(
            "loopguard: no test was guarded: none ran with loopguard enabled (none was "
            "selected, or every one was disabled), so nothing was checked",
            yellow=True,
        )
    if not (state.verdicts or state.written):
        return  # nothing more to say (and nothing of the reports to import)
    from ._report import annotations, closing_lines

    for text, markup in closing_lines(state.verdicts, state.reader_off, state.written):
        tr.write_line(text, **markup)
    if os.environ.get("GITHUB_ACTIONS") == "true" and state.verdicts:
        for text in annotations(
            state.verdicts, root=config.rootpath, workspace=os.environ.get("GITHUB_WORKSPACE")
        ):
            tr.write_line(text)
