"""What loopguard tells the session: the hotspot table (:func:`summary_lines`, from any list of
verdicts), the JSON report (:func:`report_data`, schema ``docs/report-schema.json``), the
baseline file and CI annotations. Pure functions of the verdicts, but for the atomic write."""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from ._errors import SettingError
from ._events import blocking_native
from ._failure import summary
from ._files import relative_path
from ._judge import OUTCOMES, SEVERITIES, Baseline, Verdict, cause_explains
from ._parse import format_duration

__all__ = [
    "REPORT_VERSION",
    "annotations",
    "baseline_text",
    "check_writable",
    "closing_lines",
    "fixed_lines",
    "guarded_count",
    "hotspot_lines",
    "hotspots",
    "report_chunks",
    "report_data",
    "summary_lines",
    "totals",
    "write_atomically",
]

REPORT_VERSION = 1
"""Version of the JSON report's schema (docs/report-schema.json); bumped on breaking changes."""

_SHORT_ROWS = 5


# --- the hotspot table ---------------------------------------------------------------------


@dataclass
class Hotspot:
    """The blocks seen at one call site."""

    site: str
    operation: str
    severity: str = "MONITOR"
    count: int = 0
    max: float = 0.0
    total: float = 0.0
    tests: set[str] = field(default_factory=set)
    outcomes: Counter[str] = field(default_factory=Counter)
    where: list[tuple[str, str]] = field(default_factory=list)
    """``(test, phase)`` of each block, in order."""
    worst: Optional[Verdict] = None
    """The longest block at this site."""
    fix: Optional[str] = None
    """What to do instead (``BlockEvent.fix``), as the first block at this site with one says."""

    def outcome_text(self) -> str:
        if len(self.outcomes) == 1:
            return next(iter(self.outcomes))
        return ", ".join(f"{self.outcomes[o]} {o}" for o in OUTCOMES if self.outcomes[o])


_CAUSES = {
    "import": "(importing) ",
    "gc": "(garbage collection) ",
    "coverage": "(coverage) ",
    "cpu-wait": "(waiting for a CPU) ",
    "callbacks": "(many callbacks) ",
}


def _operation(v: Verdict) -> str:
    # A collection or a wait for a CPU in a block that is over the threshold without it is
    # not what the block was: the operation is shown alone (the failure's text has the share).
    label = _CAUSES.get(v.event.cause or "", "") if cause_explains(v.event) else ""
    return label + _plain_operation(v)


def _plain_operation(v: Verdict) -> str:
    ev = v.event
    if ev.native_stack:
        # The C function the call blocked in, under the Python frame that made the call.
        native = blocking_native(ev.native_stack).name
        return native if ev.innermost is None else f"{ev.innermost} → {native}"
    if ev.innermost is not None:
        return str(ev.innermost)
    if ev.site is not None and ev.site.source:
        text = ev.site.source.split("  # ", 1)[0]
        return text if len(text) <= 48 else text[:45] + "..."
    return "?"


def hotspots(verdicts: list[Verdict]) -> list[Hotspot]:
    """Blocks grouped by call site, worst severity first, then most time blocked."""
    spots: dict[tuple[Any, ...], Hotspot] = {}
    for v in verdicts:
        if v.outcome == "allowed":
            continue
        ev = v.event
        key: tuple[Any, ...] = (
            (ev.site.filename, ev.site.lineno, ev.site.function) if ev.site else ("?",)
        )
        spot = spots.get(key)
        if spot is None:
            site = str(ev.site) if ev.site else "(ended before its stack was sampled)"
            spot = spots[key] = Hotspot(site=site, operation=_operation(v))
        spot.count += 1
        if spot.fix is None:
            spot.fix = ev.fix
        if spot.worst is None or ev.duration > spot.worst.event.duration:
            spot.worst = v
        spot.max = max(spot.max, ev.duration)
        spot.total += ev.duration
        if v.test:  # "" for a block that began outside any test
            spot.tests.add(v.test)
        if (v.test, v.phase) not in spot.where:
            spot.where.append((v.test, v.phase))
        spot.outcomes[v.outcome] += 1
        if SEVERITIES.index(v.severity) < SEVERITIES.index(spot.severity):
            spot.severity = v.severity
    return sorted(spots.values(), key=lambda s: (SEVERITIES.index(s.severity), -s.total))


_SEVERITY_MARKUP = {
    "CRITICAL": {"red": True, "bold": True},
    "HIGH": {"red": True},
    "MEDIUM": {"yellow": True},
    "MONITOR": {"cyan": True},
}


def totals_line(verdicts: list[Verdict]) -> str:
    outcomes = Counter(v.outcome for v in verdicts)
    tests = {v.test for v in verdicts if v.test}
    sites = {
        (v.event.site.filename, v.event.site.lineno) if v.event.site else None for v in verdicts
    }
    total = sum(v.event.duration for v in verdicts)
    blocks = "block" if len(verdicts) == 1 else "blocks"
    parts = ", ".join(f"{outcomes[o]} {o}" for o in OUTCOMES if outcomes[o])
    return (
        f"{len(verdicts)} {blocks} at {len(sites)} call site{'s' * (len(sites) != 1)} in "
        f"{len(tests)} test{'s' * (len(tests) != 1)}, {format_duration(total)} blocked "
        f"in total: {parts}"
    )


def summary_lines(
    verdicts: list[Verdict], verbosity: int, test_label: Callable[[str], str] = str
) -> list[tuple[str, dict[str, bool]]]:
    """The hotspot table as ``(text, markup)`` lines; ``-q`` shortens it, ``-qq`` to totals,
    ``-v`` adds under each row its fix and its tests (as ``test_label`` shows them)."""
    out: list[tuple[str, dict[str, bool]]] = []
    spots = hotspots(verdicts)
    shown = spots if verbosity >= 0 else spots[:_SHORT_ROWS] if verbosity == -1 else []
    if shown:
        site_w = min(60, max(len("call site"), *(len(s.site) for s in shown)))
        out_w = max(len("outcome"), *(len(s.outcome_text()) for s in shown))
        head = (
            f"{'severity':<8}  {'count':>5}  {'tests':>5}  {'max':>9}  {'total':>9}  "
            f"{'outcome':<{out_w}}  {'call site':<{site_w}}  blocking operation"
        )
        out.append((head, {"bold": True}))
        for s in shown:
            text = (
                f"{s.severity:<8}  {s.count:>5}  {len(s.tests):>5}  {format_duration(s.max):>9}"
                f"  {format_duration(s.total):>9}  {s.outcome_text():<{out_w}}  "
                f"{s.site:<{site_w}}  {s.operation}"
            )
            out.append((text, _SEVERITY_MARKUP[s.severity]))
            if verbosity > 0:
                if s.fix:
                    out.append((f"    fix: {s.fix}", {}))
                out.extend((f"    {test_label(t)} ({phase})", {}) for t, phase in s.where)
        if len(shown) < len(spots):
            out.append((f"... {len(spots) - len(shown)} more call sites (without -q: all)", {}))
    bad = any(v.outcome == "failed" for v in verdicts)
    out.append((totals_line(verdicts), {"red": bad, "yellow": not bad, "bold": True}))
    return out


def fixed_lines(fixed: list[tuple[str, str]]) -> list[str]:
    """The baseline's call sites that did not block, under the hotspot table."""
    n = len(fixed)
    head = (
        f"{n} call site{'s' * (n != 1)} of the baseline did not block in this run (fixed? "
        "shrink the file with --loopguard-baseline-update):"
    )
    return [head, *(f"    {file} in {function}" for file, function in fixed)]


def hotspot_lines(
    verdicts: list[Verdict],
    fixed: list[tuple[str, str]],
    verbosity: int,
    test_label: Callable[[str], str] = str,
) -> list[tuple[str, dict[str, bool]]]:
    """The terminal summary's section: the hotspot table (:func:`summary_lines`), then the
    baseline's call sites that did not block (``fixed``)."""
    out = summary_lines(verdicts, verbosity, test_label) if verdicts else []
    if fixed:
        out.extend((text, {"green": True}) for text in fixed_lines(fixed))
    return out


def closing_lines(
    verdicts: list[Verdict], reader_off: Optional[str], written: list[str]
) -> list[tuple[str, dict[str, bool]]]:
    """The lines after the table: blocks captured late because the GIL-free reader is off
    (``reader_off`` says why), and what was written at the end of the session."""
    out: list[tuple[str, dict[str, bool]]] = []
    late = sum(1 for v in verdicts if v.event.late)
    if late and reader_off is not None:
        out.append(
            (
                f"loopguard: {late} block{'s were' if late != 1 else ' was'} captured late, by "
                f"taking the GIL: the GIL-free stack reader is off ({reader_off})",
                {"yellow": True},
            )
        )
    out.extend((f"loopguard: {text}", {}) for text in written)
    return out


# --- baseline ------------------------------------------------------------------------------


def baseline_text(verdicts: list[Verdict]) -> tuple[str, int]:
    """The baseline file written by ``--loopguard-baseline-update``: the call sites of the blocks
    over the threshold; and how many there are."""
    sites = [v.key for v in verdicts if v.over_threshold and v.key is not None]
    return Baseline.dumps(sites), len(set(sites))  # type: ignore[arg-type]


# --- JSON report ----------------------------------------------------------------------------


def _ms(seconds: float) -> float:
    """As the events have their durations (:meth:`BlockEvent.to_json`): to the nanosecond."""
    return round(seconds * 1000.0, 6)


def wall_clock_offset() -> int:
    """Nanoseconds to add to a reading of the monotonic clock (the watchdog's, and every
    process's on this machine) to get the time since the epoch."""
    return time.time_ns() - time.monotonic_ns()


def new_run(*, interrupted: bool, guarded: Optional[int] = None) -> dict[str, Any]:
    """The report's description of the run that wrote it (a merged report lists several).
    ``guarded``: how many tests ran with loopguard enabled (``None``: not known)."""
    run: dict[str, Any] = {"id": uuid.uuid4().hex, "interrupted": interrupted}
    if guarded is not None:
        run["guarded"] = guarded
    return run


def guarded_count(runs: list[dict[str, Any]]) -> tuple[int, bool]:
    """How many tests the runs of a report guarded (tests that ran with loopguard enabled),
    and whether every run said (a report written before runs counted them does not: its
    count is unknown)."""
    counts = [r.get("guarded") for r in runs]
    known = [n for n in counts if isinstance(n, int) and not isinstance(n, bool)]
    return sum(known), len(known) == len(counts)


def totals(verdicts: list[Verdict], runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The report's ``"totals"``: of its events, and the tests its runs guarded (``null``
    when a run did not count them)."""
    outcomes = Counter(v.outcome for v in verdicts)
    guarded, complete = guarded_count(runs)
    return {
        "events": len(verdicts),
        "tests": len({v.test for v in verdicts if v.test}),
        "guarded": guarded if complete else None,
        "blocked_ms": _ms(sum(v.event.duration for v in verdicts)),
        "outcomes": {o: outcomes[o] for o in OUTCOMES},
    }


def report_data(
    verdicts: list[Verdict],
    *,
    root: Path,
    settings: dict[str, Any],
    fixed: list[tuple[str, str]],
    loopguard_version: str,
    pytest_version: str,
    sampler: Optional[str],
    run: Optional[dict[str, Any]] = None,
    phases: Optional[dict[str, dict[str, list[float]]]] = None,
) -> dict[str, Any]:
    """The JSON report (schema: docs/report-schema.json). ``phases``: per test, the
    ``[start_ms, end_ms]`` (since the epoch) of each phase that ran.

    Its ``"events"`` is an iterator that makes each event's data when it is reached, so that
    :func:`report_chunks` writes a large report without holding it all: make it a list to
    read it more than once."""
    clock = wall_clock_offset()
    per_test: dict[str, list[Verdict]] = defaultdict(list)
    for v in verdicts:
        if v.test:
            per_test[v.test].append(v)
    tests = []
    for test in sorted(per_test):
        vs = per_test[test]
        outcomes = Counter(v.outcome for v in vs)
        tests.append(
            {
                "test": test,
                "events": len(vs),
                "blocked_ms": _ms(sum(v.event.duration for v in vs)),
                "max_ms": _ms(max(v.event.duration for v in vs)),
                "outcomes": {o: outcomes[o] for o in OUTCOMES if outcomes[o]},
                "phases": (phases or {}).get(test, {}),
            }
        )
    runs = [run or new_run(interrupted=False)]
    return {
        "version": REPORT_VERSION,
        "settings": settings,
        "environment": {
            "python": platform.python_version(),
            "implementation": sys.implementation.name,
            "platform": sys.platform,
            "pytest": pytest_version,
            "loopguard": loopguard_version,
            "sampler": sampler,
        },
        "totals": totals(verdicts, runs),
        "tests": tests,
        "events": (v.to_json(root, clock=clock) for v in verdicts),
        "fixed": [{"file": f, "function": fn} for f, fn in fixed],
        "runs": runs,
    }


def check_writable(path: Path, *, name: str, source: str) -> None:
    """A usage error now rather than a lost report at the end of the session."""
    if path.is_dir():
        raise SettingError(
            f"invalid value for {name}: {str(path)!r} (from {source}); it is a directory, "
            "expected a file path"
        )
    parent = path.parent
    if not parent.is_dir():
        raise SettingError(
            f"invalid value for {name}: {str(path)!r} (from {source}); the directory "
            f"{parent} does not exist"
        )
    try:
        fd, probe = tempfile.mkstemp(dir=parent, prefix=f".{path.name}.", suffix=".probe")
    except OSError as e:
        raise SettingError(
            f"invalid value for {name}: {str(path)!r} (from {source}); cannot write in "
            f"{parent} ({e.strerror or e})"
        ) from None
    os.close(fd)
    os.unlink(probe)
    if path.exists() and not os.access(path, os.W_OK):
        raise SettingError(
            f"invalid value for {name}: {str(path)!r} (from {source}); the file is read-only"
        )


def _umask() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # no way to read it without setting it (briefly, process-wide)
    os.umask(mask)
    return mask


def write_atomically(path: Path, text: Union[str, Iterable[str]]) -> None:
    """Write ``text`` (a string, or the pieces of one) to ``path`` so that readers see the
    old file or the whole new one.

    The file gets the permissions of the file it replaces, or those of a file made with
    ``open()`` (0666 less the umask): not the temporary file's 0600, which would hide a CI
    artifact from a job running as another user."""
    try:
        mode = path.stat().st_mode & 0o7777
    except OSError:
        mode = 0o666 & ~_umask()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for piece in (text,) if isinstance(text, str) else text:
                f.write(piece)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def report_chunks(data: dict[str, Any]) -> Iterator[str]:
    """The report as JSON on one line, in pieces: one per event, whose data is made only then
    when ``data["events"]`` is an iterator (:func:`report_data`). No indent: json's C encoder
    only runs without one (about 5x faster on large reports)."""
    tail = ("fixed", "runs")
    head = {k: v for k, v in data.items() if k != "events" and k not in tail}
    yield json.dumps(head, ensure_ascii=False)[:-1] + ', "events": ['
    for i, event in enumerate(data["events"]):
        yield (", " if i else "") + json.dumps(event, ensure_ascii=False)
    rest = ", ".join(f"{json.dumps(k)}: {json.dumps(data[k], ensure_ascii=False)}" for k in tail)
    yield f"], {rest}}}\n"


# --- CI annotations ------------------------------------------------------------------------


def _escape_data(s: str) -> str:
    return s.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(s: str) -> str:
    return _escape_data(s).replace(":", "%3A").replace(",", "%2C")


def annotations(verdicts: list[Verdict], *, root: Path, workspace: Optional[str]) -> list[str]:
    """GitHub Actions workflow commands: ``::error`` per failing call site, ``::warning`` per
    baselined, warned or recorded one (allowed blocks are not annotated)."""
    base = Path(workspace) if workspace else root
    groups: dict[tuple[str, str, int], list[Verdict]] = defaultdict(list)
    for v in verdicts:
        if v.outcome == "allowed" or v.event.site is None:
            continue
        level = "error" if v.outcome == "failed" else "warning"
        f = v.event.site
        groups[(level, relative_path(f.filename, base), f.lineno)].append(v)
    lines = []
    for (level, file, lineno), vs in sorted(groups.items()):
        worst = max(vs, key=lambda v: v.event.duration)
        ev = worst.event
        sev = min((v.severity for v in vs), key=SEVERITIES.index)
        outcomes = sorted({v.outcome for v in vs}, key=OUTCOMES.index)
        tests = sorted({v.test or "(outside any test)" for v in vs})
        times = "once" if len(vs) == 1 else f"{len(vs)} times"
        msg = (
            f"{summary(ev)} in {ev.site.function if ev.site else '?'} ({times}; "
            f"{', '.join(outcomes)}) in {', '.join(tests[:3])}"
            + (f" and {len(tests) - 3} more tests" if len(tests) > 3 else "")
        )
        title = f"loopguard: event loop blocked ({sev})"
        lines.append(
            f"::{level} file={_escape_property(file)},line={lineno},"
            f"title={_escape_property(title)}::{_escape_data(msg)}"
        )
    return lines
