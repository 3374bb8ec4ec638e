"""pytest-xdist: workers ship their events to the controller, which aggregates them.

Under ``pytest -n N`` every test runs in a worker process, with its own watchdog; the worker
fails its tests as usual. The controller runs no test, so all it knows about loopguard is what
arrives in the reports. Each worker attaches the events it judged for a report to that report
(``report.loopguard_events``: a list of verdicts as :meth:`Verdict.to_json
<loopguard._judge.Verdict.to_json>` writes them for the JSON report, file names relative to the
rootdir, with the stack samples of failing blocks; xdist's serialization carries them), and
the controller adds them to its own ``state.verdicts`` when the report is logged: once per
report, so once per event. A worker also marks the call report of a test that ran with
loopguard enabled (``report.loopguard_guarded``), from which the controller counts the guarded
tests. The hotspot table, annotations and JSON report then cover every worker. A worker
writes no report of its own, so once a report is logged (xdist has sent it) it drops that
report's verdicts: its ``state.verdicts`` holds only what the controller has not received,
and its memory does not grow with the events it records. At the end of its session it hands
over, through xdist's ``workeroutput``, whatever is left there (none, unless a plugin
swallowed a report or a block ended after its test), so nothing is lost when it exits.

A failure report whose longrepr is loopguard's own keeps it across the process boundary
(rebuilt from the events on the controller), so the ``FAILED ... - loopguard: ...`` line reads
the same with and without xdist.

Registered by :func:`loopguard.plugin.pytest_configure` as a plugin object of its own (so its
``pytest_runtest_makereport`` can wrap the plugin's), in every process of an xdist session, and
only there: without xdist its hooks would only add to the cost of every test.
"""

from __future__ import annotations

import sys
from collections.abc import Generator
from typing import TYPE_CHECKING, Any, Optional

import pytest

from ._state import XDIST_PLUGIN, is_worker

if TYPE_CHECKING:
    from ._judge import Verdict
    from ._state import State, TestState

__all__ = ["ATTR", "XdistPlugin"]

ATTR = "loopguard_events"
"""The report attribute that carries a worker's events to the controller."""
GUARDED_ATTR = "loopguard_guarded"
"""The report attribute that marks a test that ran with loopguard enabled (its call report)."""
_LONGREPR_KEY = "loopguard_longrepr"
_OUTPUT_KEY = "loopguard"


class XdistPlugin:
    name = XDIST_PLUGIN

    def __init__(self, config: pytest.Config, state: State) -> None:
        self.config = config
        self.state = state
        self.worker = is_worker(config)
        # Worker: the verdicts attached to a report not logged yet (by id of the report).
        self._pending: dict[int, list[Verdict]] = {}
        # Worker: the verdicts of the running test already attached to a report (each is sent
        # once), by id: its TestState keeps them alive, so their ids stay theirs until the
        # next test's TestState replaces it (and this set).
        self._attached: set[int] = set()
        self._attached_for: Optional[TestState] = None
        # Controller: how many events arrived from each worker ("gw0", ...).
        self.received: dict[str, int] = {}

    # --- worker side -----------------------------------------------------------------------

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: Any) -> Any:
        if not self.worker:
            return (yield)
        report = yield
        ts = self.state.current
        if ts is None or ts.item is not item:
            return report
        if call.when == "call" and ts.enabled:
            setattr(report, GUARDED_ATTR, True)
        if ts is not self._attached_for:
            self._attached, self._attached_for = set(), ts
        new = [v for v in ts.verdicts.get(call.when, ()) if id(v) not in self._attached]
        if new:
            self._attached.update(map(id, new))
            setattr(report, ATTR, [self._to_data(v) for v in new])
            self._pending[id(report)] = new
        return report

    @pytest.hookimpl(wrapper=True)
    def pytest_report_to_serializable(self, config: pytest.Config, report: Any) -> Any:
        data = yield
        # No FailureRepr exists before loopguard._failure is imported (by the first failure).
        failure = sys.modules.get("loopguard._failure")
        if data is not None and failure and isinstance(report.longrepr, failure.FailureRepr):
            data[_LONGREPR_KEY] = report.longrepr.stack  # how it prints stacks: short, full
        return data

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> Generator[None, Any, Any]:
        shipped = getattr(report, ATTR, None)
        if not self.worker and getattr(report, GUARDED_ATTR, False):
            self.state.guarded += 1  # a worker's test (reports logged here carry no mark)
            delattr(report, GUARDED_ATTR)
        if shipped and not self.worker:
            # Reports logged in this process carry no ATTR (only workers attach it), so
            # whatever arrives here came from a worker and is counted exactly once.
            self._receive(shipped, _worker_id(report))
        try:
            return (yield)
        finally:
            sent = self._pending.pop(id(report), None) if self.worker else None
            if sent:
                # xdist's worker has sent the report from its own pytest_runtest_logreport:
                # the controller has these verdicts, this process needs them no more.
                done = {id(v) for v in sent}
                self.state.verdicts[:] = [v for v in self.state.verdicts if id(v) not in done]
            if shipped:
                # The terminal reporter keeps every report to the end: not the events' data.
                delattr(report, ATTR)

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        output = getattr(self.config, "workeroutput", None)
        if not self.worker or output is None:
            return
        # What no logged report carried (shipped verdicts are no longer in the list).
        output[_OUTPUT_KEY] = {"unshipped": [self._to_data(v) for v in self.state.verdicts]}

    # --- controller side -------------------------------------------------------------------

    @pytest.hookimpl(wrapper=True)
    def pytest_report_from_serializable(self, config: pytest.Config, data: Any) -> Any:
        report = yield
        if report is not None and isinstance(data, dict) and data.get(_LONGREPR_KEY):
            from ._failure import FailureRepr
            from ._judge import Verdict

            failing = [
                Verdict.from_json(d, self.config.rootpath).event
                for d in getattr(report, ATTR, None) or []
                if d.get("outcome") == "failed" and d.get("phase") == report.when
            ]
            if failing:
                stack = data[_LONGREPR_KEY]
                report.longrepr = FailureRepr(failing, stack if stack == "full" else "short")
        return report

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: Optional[object]) -> None:
        output = getattr(node, "workeroutput", None) or {}
        mine = output.get(_OUTPUT_KEY)
        if mine:
            self._receive(mine.get("unshipped", []), _node_id(node))

    def _receive(self, shipped: list[dict[str, Any]], worker: str) -> None:
        from ._judge import Verdict

        for d in shipped:
            v = Verdict.from_json(d, self.config.rootpath)
            v.event.samples = []  # the report that needed them is rebuilt on its own
            self.state.verdicts.append(v)
        self.received[worker] = self.received.get(worker, 0) + len(shipped)

    def _to_data(self, v: Verdict) -> dict[str, Any]:
        """A verdict as the JSON report has it, with the samples of a failing block (for its
        failure report, rebuilt on the controller)."""
        return v.to_json(self.config.rootpath, samples=v.outcome == "failed")


def _worker_id(report: Any) -> str:
    node = getattr(report, "node", None)
    return _node_id(node) if node is not None else str(getattr(report, "worker_id", "?"))


def _node_id(node: Any) -> str:
    gateway = getattr(node, "gateway", None)
    return str(getattr(gateway, "id", "?"))
