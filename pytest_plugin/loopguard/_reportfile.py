"""JSON reports read back from disk, for ``python -m loopguard`` (see :mod:`loopguard._cli`).

A report is checked before anything is done with it, and every problem is a
:class:`ReportError` naming the file and what was expected. Its events become
:class:`~loopguard._judge.Verdict` objects again, so the hotspot table and the annotations are
drawn by the very functions that draw them at the end of a session.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from ._events import BlockEvent, Callback, Frame
from ._judge import OUTCOMES, SEVERITIES, Verdict
from ._report import REPORT_VERSION

__all__ = ["Report", "ReportError", "read_report", "verdicts"]


class ReportError(Exception):
    """A file that cannot be used as a loopguard report (the message names it)."""


@dataclass
class Report:
    path: Path
    data: dict[str, Any]

    @property
    def runs(self) -> list[dict[str, Any]]:
        return self.data["runs"]


@dataclass(frozen=True)
class _SourcedFrame(Frame):
    """A frame read from a report, with the source line the report recorded for it."""

    text: str = ""

    @property
    def source(self) -> str:
        return self.text or super().source


_SECTIONS = {
    "settings": dict,
    "environment": dict,
    "totals": dict,
    "tests": list,
    "events": list,
    "fixed": list,
}
_EVENT_KEYS = {
    "test": str,
    "phase": str,
    "duration_ms": (int, float),
    "threshold_ms": (int, float),
    "severity": str,
    "outcome": str,
    "stack": list,
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
    for i, ev in enumerate(data["events"]):
        problem = _event_problem(ev)
        if problem:
            raise bad(f"events[{i}]: {problem}")
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
    return Report(path, data)


def _kind(value: Any) -> str:
    return "nothing" if value is None else type(value).__name__


def _event_problem(ev: Any) -> Optional[str]:
    if not isinstance(ev, dict):
        return f"expected an object, found {_kind(ev)}"
    for key, kind in _EVENT_KEYS.items():
        value = ev.get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            return f"expected {key!r} of type {_type_name(kind)}, found {_kind(value)}"
    if ev["severity"] not in SEVERITIES:
        return f"unknown severity {ev['severity']!r}; expected one of {', '.join(SEVERITIES)}"
    if ev["outcome"] not in OUTCOMES:
        return f"unknown outcome {ev['outcome']!r}; expected one of {', '.join(OUTCOMES)}"
    for key in ("site", "operation"):
        if ev.get(key) is not None and _frame_problem(ev[key]):
            return f"{key}: {_frame_problem(ev[key])}"
    for i, f in enumerate(ev["stack"]):
        if _frame_problem(f):
            return f"stack[{i}]: {_frame_problem(f)}"
    return None


def _type_name(kind: Any) -> str:
    return "number" if isinstance(kind, tuple) else kind.__name__


def _frame_problem(f: Any) -> Optional[str]:
    if not (
        isinstance(f, dict)
        and isinstance(f.get("file"), str)
        and isinstance(f.get("line"), int)
        and isinstance(f.get("function"), str)
    ):
        return f"expected a frame {{file, line, function}}, found {f!r:.80}"
    return None


def _frame(d: Optional[dict[str, Any]]) -> Optional[Frame]:
    if d is None:
        return None
    return _SourcedFrame(d["file"], d["line"], d["function"], d.get("source") or "")


def _frames(ds: Optional[list[dict[str, Any]]]) -> list[Frame]:
    return [f for f in map(_frame, ds or []) if f is not None]


def _seconds(ms: Optional[float]) -> Optional[float]:
    return None if ms is None else ms / 1000.0


def verdicts(data: dict[str, Any]) -> list[Verdict]:
    """The report's events as verdicts (file names as the report has them: relative to the
    rootdir of the run, or absolute outside it)."""
    out = []
    for i, e in enumerate(data["events"]):
        holder = e.get("gil_holder") or {}
        site = _frame(e.get("site"))
        ev = BlockEvent(
            id=i,
            duration=e["duration_ms"] / 1000.0,
            threshold=e["threshold_ms"] / 1000.0,
            thread_name=e.get("thread") or "?",
            thread_ident=0,
            task_name=e.get("task"),
            captured_after=_seconds(e.get("captured_after_ms")),
            starved=bool(e.get("starved")),
            loop_kind=e.get("loop") or "asyncio",
            test=e["test"] or None,
            phase=e["phase"],
            start_ns=0,
            end_ns=0,
            site=site,
            innermost=_frame(e.get("operation")),
            stack=_frames(e["stack"]),
            gil=e.get("gil") or "unknown",
            gil_holder_thread=holder.get("thread"),
            gil_holder_stack=_frames(holder.get("stack")),
            sites_changed=bool(e.get("several_calls")),
            late=bool(e.get("late")),
            cause=e.get("cause"),
            hint=e.get("hint"),
            syscall=e.get("syscall"),
            cpu_wait=_seconds(e.get("cpu_wait_ms")),
            gc_time=_seconds(e.get("gc_ms")) or 0.0,
            callbacks=[
                Callback(
                    first=c["first_ms"] / 1000.0,
                    last=c["last_ms"] / 1000.0,
                    min=c["min_ms"] / 1000.0,
                    max=c["max_ms"] / 1000.0,
                    samples=c["samples"],
                    in_callback=c["in_callback"],
                    site=_frame(c.get("site")),
                )
                for c in e.get("callbacks") or []
            ],
        )
        out.append(
            Verdict(
                event=ev,
                test=e["test"],
                phase=e["phase"],
                threshold=ev.threshold,
                severity=e["severity"],
                outcome=e["outcome"],
                reason=e.get("reason"),
                mode=e.get("mode") or "fail",
                key=(site.filename, site.function) if site is not None else None,
                over_threshold=_over_threshold(e),
            )
        )
    return out


def _over_threshold(e: dict[str, Any]) -> bool:
    """Whether the event's block would fail its test without the baseline and the mode. Reports
    written before the field existed say it through the outcome and, for record mode, the
    reason."""
    if "over_threshold" in e:
        return bool(e["over_threshold"])
    return e["outcome"] in ("failed", "warned", "baselined") or (
        e["outcome"] == "recorded" and e.get("reason") == "mode record"
    )
