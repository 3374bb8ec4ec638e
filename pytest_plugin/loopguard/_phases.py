"""When each phase of a test ran, for the timelines of the reports.

Registered by :func:`loopguard.plugin.pytest_configure` when a JSON or HTML report is asked
for. It reads the start and stop times pytest puts on every test report (seconds since the
epoch), in the process that logs reports: the xdist controller sees every worker's. A test's
times are kept only when the test has blocks to show on a timeline: those of other tests are
dropped when their teardown is logged, so a large suite costs nothing here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from ._state import PHASES_PLUGIN

if TYPE_CHECKING:
    from ._judge import Verdict

__all__ = ["PhaseTimes"]


class PhaseTimes:
    name = PHASES_PLUGIN

    def __init__(self, verdicts: list[Verdict]) -> None:
        self.verdicts = verdicts
        """The session's verdicts (the plugin's own list, which grows as tests run)."""
        self.phases: dict[str, dict[str, list[float]]] = {}
        """Per test id, ``{phase: [start_ms, end_ms]}`` in milliseconds since the epoch."""
        self._blocked: set[str] = set()
        self._seen = 0

    @pytest.hookimpl(trylast=True)  # after the xdist controller has received the verdicts
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        start, stop = getattr(report, "start", 0), getattr(report, "stop", 0)
        if start and stop:
            times = self.phases.setdefault(report.nodeid, {})
            times[report.when] = [round(start * 1e3, 3), round(stop * 1e3, 3)]
        if report.when != "teardown":
            return
        for v in self.verdicts[self._seen :]:
            self._blocked.add(v.test)
        self._seen = len(self.verdicts)
        if report.nodeid not in self._blocked:
            self.phases.pop(report.nodeid, None)
