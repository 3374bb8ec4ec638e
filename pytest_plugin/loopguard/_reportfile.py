"""JSON reports read back from disk, for ``python -m loopguard`` (see :mod:`loopguard._cli`).

A report is checked before anything is done with it, and every problem is a
:class:`ReportError` naming the file and what was expected. Its events become
:class:`~loopguard._judge.Verdict` objects again, read by the decoder that pairs with the
encoder that wrote them (:meth:`Verdict.from_json <loopguard._judge.Verdict.from_json>`), so
the hotspot table, the annotations and the HTML page are drawn from the very model, by the very
functions, that draw them at the end of a session.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._events import FormatError
from ._judge import Verdict
from ._report import REPORT_VERSION, guarded_count

__all__ = ["Report", "ReportError", "read_report", "verdicts"]


class ReportError(Exception):
    """A file that cannot be used as a loopguard report (the message names it)."""


@dataclass
class Report:
    path: Path
    data: dict[str, Any]
    verdicts: list[Verdict] = field(default_factory=list)
    """Its events, read back."""

    @property
    def runs(self) -> list[dict[str, Any]]:
        return self.data["runs"]

    @property
    def guarded(self) -> tuple[int, bool]:
        """How many tests its runs guarded, and whether every run said (see
        :func:`loopguard._report.guarded_count`)."""
        return guarded_count(self.runs)


_SECTIONS = {
    "settings": dict,
    "environment": dict,
    "totals": dict,
    "tests": list,
    "events": list,
    "fixed": list,
}


def read_report(path: Path) -> Report:
    """Read and check one report; raises :class:`ReportError` naming ``path`` and the problem."""

    def bad(why: str) -> ReportError:
        return ReportError(f"{path}: {why}")

    if path.is_dir():
        raise bad("is a directory; expected a JSON report written by --loopguard-json")
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise bad("no such file") from None
    except OSError as e:
        raise bad(f"cannot read it ({e.strerror or e})") from None
    try:
        data = json.loads(raw)
    except ValueError as e:
        raise bad(f"not JSON ({e}); expected a report written by --loopguard-json") from None
    version = data.get("version") if isinstance(data, dict) else None
    if not isinstance(data, dict) or not isinstance(version, int) or isinstance(version, bool):
        raise bad(
            "not a loopguard report (expected a JSON object with a 'version' number, as "
            "written by --loopguard-json)"
        )
    if version > REPORT_VERSION:
        raise bad(
            f"written by a newer loopguard (report version {version}); this one reads "
            f"version {REPORT_VERSION}: upgrade pytest-loopguard"
        )
    if version < 1:
        raise bad(f"unknown report version {version}; expected {REPORT_VERSION}")
    for key, kind in _SECTIONS.items():
        if not isinstance(data.get(key), kind):
            raise bad(
                f"not a loopguard report: expected {kind.__name__ if kind is list else 'an object'}"
                f" under {key!r}, found {_kind(data.get(key))}"
            )
    try:
        read = verdicts(data)
    except FormatError as e:
        raise bad(str(e)) from None
    if "runs" not in data:
        # Written before reports named their run: the file's contents stand for it.
        data["runs"] = [{"id": hashlib.sha256(raw).hexdigest()[:32], "interrupted": False}]
    runs = data["runs"]
    if not (
        isinstance(runs, list)
        and runs
        and all(isinstance(r, dict) and isinstance(r.get("id"), str) for r in runs)
    ):
        raise bad("expected a non-empty list of objects with an 'id' under 'runs'")
    for i, run in enumerate(runs):
        n = run.get("guarded")
        if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 0):
            raise bad(
                f"runs[{i}]: expected 'guarded' to be a count of tests (an integer, 0 or "
                f"more), found {n!r:.40}"
            )
    return Report(path, data, read)


def _kind(value: Any) -> str:
    return "nothing" if value is None else type(value).__name__


def verdicts(data: dict[str, Any]) -> list[Verdict]:
    """The report's events as verdicts (file names as the report has them: relative to the
    rootdir of the run, or absolute outside it); raises
    :class:`~loopguard._events.FormatError` naming the event and what is wrong with it."""
    out = []
    for i, e in enumerate(data["events"]):
        try:
            out.append(Verdict.from_json(e))
        except FormatError as err:
            raise FormatError(f"events[{i}]: {err}") from None
    return out
