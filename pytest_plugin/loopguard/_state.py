"""The plugin's state: the session's (:class:`State`, kept in ``config.stash``) and the running
test's (:class:`TestState`). What is in them is resolved by :mod:`loopguard._settings` and
judged by :mod:`loopguard._judge`; the hooks of :mod:`loopguard.plugin` keep them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Optional

from ._judge import Judge, Verdict
from ._record import Record
from ._settings import Settings, TestSettings, marker_settings

if TYPE_CHECKING:
    import pytest

    from ._fixture import ExpectBlock
    from ._parse import AllowPattern

__all__ = ["PHASES_PLUGIN", "XDIST_PLUGIN", "State", "TestState", "is_worker", "xdist_needed"]

XDIST_PLUGIN = "loopguard-xdist"
"""The name of :class:`loopguard._xdist.XdistPlugin` as registered (imported only by a session
that needs it: :func:`xdist_needed`)."""
PHASES_PLUGIN = "loopguard-phases"
"""The name of :class:`loopguard._phases.PhaseTimes` as registered (imported only by a session
that writes a report)."""


def is_worker(config: pytest.Config) -> bool:
    """True in an xdist worker."""
    return hasattr(config, "workerinput")


def xdist_needed(config: pytest.Config) -> bool:
    """True in an xdist worker and in a controller that distributes tests."""
    if is_worker(config):
        return True
    return getattr(config.option, "dist", "no") != "no" and bool(getattr(config.option, "tx", None))


class TestState:
    """The test that is running (or has just run): its settings, phase and verdicts. Only the
    current test has one, so a collected test costs no memory until it runs."""

    __test__ = False  # not a test class, whoever imports it

    __slots__ = (
        "enabled",
        "expects",
        "item",
        "judged",
        "max_lag",
        "nodeid",
        "phase",
        "phase_start_ns",
        "settings",
        "state",
        "test_start_ns",
        "verdicts",
    )

    def __init__(self, state: State, item: pytest.Item, settings: TestSettings) -> None:
        self.state = state
        """The session's state."""
        self.item = item
        self.nodeid = item.nodeid
        """``item.nodeid``, read once (a call of pytest's each time)."""
        # The settings read at every test (the others, only when a block is judged).
        self.enabled = settings.enabled
        self.max_lag = settings.max_lag
        self.settings = settings
        self.verdicts: dict[str, Sequence[Verdict]] = {}
        """The verdicts of each phase judged so far (an empty tuple for a phase without any)."""
        self.phase = "setup"
        self.phase_start_ns = 0
        self.test_start_ns = 0
        self.judged = False
        """Some phase of the test had blocks to judge (whose samples are dropped after it)."""
        self.expects: tuple[tuple[str, ExpectBlock], ...] = ()
        """``expect_block()`` contexts of the test, with the phase that opened them (a tuple:
        nothing allocated for the many tests without one)."""

    @property
    def threshold(self) -> float:
        return self.settings.threshold

    @property
    def mode(self) -> str:
        return self.settings.mode

    @property
    def allow(self) -> tuple[AllowPattern, ...]:
        return self.settings.allow

    @property
    def native(self) -> str:
        return self.settings.native

    def floor(self, settings: Settings) -> float:
        """The shortest block worth keeping for this test."""
        floor = settings.floor(self.threshold)
        if not self.expects:
            return floor
        return min([floor, *(e.threshold for _, e in self.expects)])


class State(Record):
    """The plugin's state for one session (kept in ``config.stash``)."""

    _fields = (
        "settings",
        "token",
        "judge",
        "default",
        "marked",
        "collected",
        "current",
        "verdicts",
        "fixed",
        "written",
        "reader_off",
        "guarded",
        "applied",
    )
    __slots__ = _fields

    def __init__(
        self,
        settings: Settings,
        token: int,
        judge: Judge,
        default: TestSettings,
        marked: Optional[dict[str, TestSettings]] = None,
        collected: Optional[set[int]] = None,
        current: Optional[TestState] = None,
        verdicts: Optional[list[Verdict]] = None,
        fixed: Optional[list[tuple[str, str]]] = None,
        written: Optional[list[str]] = None,
        reader_off: Optional[str] = None,
        guarded: int = 0,
        applied: Optional[TestSettings] = None,
    ) -> None:
        self.settings = settings
        self.token = token
        self.judge = judge
        self.default = default
        """The settings of a test without a loopguard marker."""
        self.marked: dict[str, TestSettings] = {} if marked is None else marked
        """The settings of the tests that have a loopguard marker, by node id."""
        self.collected: set[int] = set() if collected is None else collected
        """``id()`` of the items whose markers were read at collection (ints: nothing for the
        garbage collector to visit)."""
        self.current = current
        self.verdicts: list[Verdict] = [] if verdicts is None else verdicts
        """Every judged block of the session (under xdist, the controller's include the
        workers')."""
        self.fixed: list[tuple[str, str]] = [] if fixed is None else fixed
        """Baseline call sites that did not block in this run."""
        self.written: list[str] = [] if written is None else written
        """What was written at the end of the session (the JSON report, the baseline)."""
        self.reader_off = reader_off
        """Why stacks are read by taking the GIL although the user did not ask for it."""
        self.guarded = guarded
        """How many tests ran their call phase with loopguard enabled (under xdist, the
        controller's counts the workers')."""
        self.applied = applied
        """The settings whose threshold and raise mode the watchdog has (those of the test that
        started last), or ``None`` when something else changed them since."""

    def settings_of(self, item: pytest.Item) -> TestSettings:
        """The settings of ``item``: those read at collection (nothing is kept for a test
        without markers: whatever is kept per test, even in its stash, is one more object for
        every garbage collection to visit), or read now for an item added later."""
        if not self.marked and id(item) in self.collected:
            return self.default  # the common case: no test has a marker
        ts = self.marked.get(item.nodeid)
        if ts is None:
            if id(item) in self.collected:
                return self.default
            ts = marker_settings(item, self.default)
            if ts is not self.default:
                self.marked[item.nodeid] = ts
        return ts

    def settings_of_test(self, nodeid: Optional[str]) -> TestSettings:
        """The settings of the test ``nodeid`` once it has finished (``None``: outside any
        test, the session's)."""
        return self.default if nodeid is None else self.marked.get(nodeid, self.default)
