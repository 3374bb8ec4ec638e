"""Verdicts: what one block means for its test, decided here and nowhere else.

Every judgement of a block goes through :class:`Judge`: the plugin's (a test's phase,
:meth:`Judge.judge_phase`; a block no test report can carry, :meth:`Judge.judge_stray`; a test
that pytest skipped or xfailed, :meth:`Judge.not_failing`), ``guard()``'s, ``offload_check()``'s
and ``python -m loopguard run``'s (:meth:`Judge.judge`). Each returns its decision as an object
(a :class:`Verdict`, or a phase's :class:`Ruling`), made once, that the caller only applies:
the hooks fail, warn or record what it says, and decide nothing themselves.

A block that reached the watchdog is judged in this order:

1. under the test's threshold (but over the record threshold): *recorded*, severity MONITOR;
2. over it only because of what was not the code's doing (:func:`excuse`): the
   garbage collection that ran during it (``--loopguard-gc``), the time the loop thread waited
   for a CPU (``--loopguard-cpu-wait``), or several callbacks of one loop iteration none of
   which reached the threshold (the last two not in raise mode, which cuts blocks short):
   *recorded*, with the cause;
3. outside the scanned packages (``loopguard_scan``) or matching an allow pattern: *allowed*;
4. a call site listed in the baseline (matched by file and function): *baselined*;
5. otherwise the mode decides: *failed* (``fail``), *warned* (``warn``) or *recorded*
   (``record``).

Then what the test's circumstances say (:meth:`Judge.judge`): a block that an
``expect_block()`` of the test covered (long enough, and inside it) is *allowed*; one that no
report can carry any more (it began outside any test, or ended after its test had finished) is
*recorded* instead of failing or warning; a warning that a warnings filter turned into an
error *fails* the test. A failing block of a test that pytest reported as skipped or xfailed
is *recorded* (:meth:`Judge.not_failing`).

Allowed, baselined and recorded blocks never fail a test; all of them appear in the summary and
the JSON report with their outcome. A phase also fails, besides its blocks, when an
``expect_block()`` opened in it saw no block, or when its loop lag went over the marker's
``max_lag`` (:meth:`Judge.judge_phase`).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Protocol

from ._errors import SettingError
from ._files import modules, relative_path
from ._parse import AllowPattern, format_duration
from ._record import Record

if TYPE_CHECKING:
    from ._events import BlockEvent, Frame

__all__ = [
    "BASELINE_VERSION",
    "GC_REASON",
    "OUTCOMES",
    "SEVERITIES",
    "SEVERITY_FROM",
    "Baseline",
    "Expectation",
    "Judge",
    "Ruling",
    "Verdict",
    "excuse",
    "severity",
]

SEVERITIES = ("CRITICAL", "HIGH", "MEDIUM", "MONITOR")
"""From worst to mildest (the limits: :data:`SEVERITY_FROM`)."""

SEVERITY_FROM = {"CRITICAL": 5.0, "HIGH": 1.0, "MEDIUM": 0.1}
"""The shortest block (seconds) of each severity but MONITOR; CRITICAL is strictly longer."""

OUTCOMES = ("failed", "warned", "baselined", "recorded", "allowed")
"""What a block did, from the one that matters most to the one that matters least."""


def severity(duration: float, threshold: float) -> str:
    """The severity of a block of ``duration`` seconds judged against ``threshold``.

    A block under the failing threshold (kept only because of the record threshold) is
    MONITOR whatever its length.
    """
    if duration < threshold or duration < SEVERITY_FROM["MEDIUM"]:
        return "MONITOR"
    if duration > SEVERITY_FROM["CRITICAL"]:
        return "CRITICAL"
    if duration >= SEVERITY_FROM["HIGH"]:
        return "HIGH"
    return "MEDIUM"


# --- excuses -------------------------------------------------------------------------------

GC_REASON = "under the threshold without garbage collection (--loopguard-gc=include counts it)"
"""Why a block is recorded when it crossed the threshold only with garbage collection."""


def excuse(
    ev: BlockEvent,
    threshold: float,
    *,
    gc: str = "exclude",
    cpu_wait: str = "exclude",
    interrupted: bool = False,
) -> Optional[tuple[str, str]]:
    """``(cause, reason)`` when ``ev``, over ``threshold``, is not one piece of code blocking
    for that long; ``None`` when it is. In this order:

    * ``"gc"``: under the threshold without the collector's own work during it
      (``gc_time``; ``gc="exclude"``);
    * ``"cpu-wait"``: under the threshold without the time the loop thread waited for a
      CPU, or, for a starved block, the time the GIL holder waited for one while it held the
      GIL (``cpu_wait="exclude"``; see :meth:`BlockEvent.machine_wait`): the machine was
      overloaded;
    * ``"gc"`` again, on a busy machine: under the threshold without both the time spent
      waiting for a CPU and the collector's own work on a CPU (``gc_cpu_time``): a
      collection's time on the clock may itself be mostly a wait for a CPU, so the two
      overlap, and only its CPU time can be taken with the wait;
    * ``"callbacks"``: a loop iteration of several callbacks, none of which can have
      reached the threshold by the samples around it.

    Otherwise each is judged on its own: a block that needs two of them together to get under
    the threshold is not excused. ``interrupted``: raise mode raised inside the block when it
    reached the threshold, so how long its code would have run is not known; only garbage
    collection excuses it.
    """
    if gc == "exclude" and ev.gc_time and ev.duration - ev.gc_time < threshold:
        return "gc", GC_REASON
    if interrupted:
        return None
    waited, by_holder = ev.machine_wait()
    if cpu_wait == "exclude" and waited and ev.duration - waited < threshold:
        if by_holder >= 0.001:
            own = waited - by_holder
            after = (
                f" and the {format_duration(own)} the loop thread waited for one once the "
                "GIL was free"
                if own >= 0.001
                else ""
            )
            return "cpu-wait", (
                f"under the threshold without the {format_duration(by_holder)} the GIL "
                f"holder waited for a CPU while holding the GIL{after} (the machine was "
                "overloaded; --loopguard-cpu-wait=include counts it)"
            )
        return "cpu-wait", (
            f"under the threshold without {format_duration(waited)} of waiting for "
            "a CPU (the machine was overloaded; --loopguard-cpu-wait=include counts it)"
        )
    if (
        gc == "exclude"
        and cpu_wait == "exclude"
        and waited
        and ev.gc_cpu_time
        and ev.duration - waited - ev.gc_cpu_time < threshold
    ):
        return "gc", (
            f"under the threshold without the {format_duration(ev.gc_cpu_time)} the garbage "
            f"collector ran on a CPU and the {format_duration(waited)} spent waiting for one "
            "(the machine was overloaded; --loopguard-gc=include or --loopguard-cpu-wait="
            "include counts them)"
        )
    longest = ev.longest_callback()
    if longest is not None and not ev.starved and longest.max < threshold:
        n = sum(1 for c in ev.callbacks if c.in_callback)
        where = f" at {longest.site}" if longest.site is not None else ""
        return "callbacks", (
            f"{n} callbacks in one loop iteration, the longest at most "
            f"{format_duration(longest.max)}{where}; none reached the threshold"
        )
    return None


def cause_explains(ev: BlockEvent) -> bool:
    """Whether the cause ``ev`` is labelled with accounts for its length over its threshold.
    Garbage collection and waiting for a CPU do when the block is under the threshold without
    them (as :func:`excuse` takes them away); a block that fails all the same is the code's, and
    is not shown as theirs. Any other cause (an import, a coverage tracer) is what the block
    was doing, and says so."""
    if ev.cause not in ("gc", "cpu-wait"):
        return True
    found = excuse(ev, ev.threshold)
    return found is not None and found[0] in ("gc", "cpu-wait")


# --- scan ------------------------------------------------------------------------------------


def _in_packages(frame: Frame, packages: tuple[str, ...]) -> bool:
    name = modules.name(frame.filename)
    return name is not None and any(name == p or name.startswith(p + ".") for p in packages)


# --- baseline ------------------------------------------------------------------------------

BASELINE_VERSION = 1


class Baseline(Record):
    """Call sites tolerated by the ratchet, as ``(file, function)`` pairs."""

    _fields = ("path", "sites")
    __slots__ = _fields

    def __init__(self, path: Path, sites: frozenset[tuple[str, str]]) -> None:
        self.path = path
        self.sites = sites

    @classmethod
    def load(cls, path: Path) -> Baseline:
        """Read ``path``; raises :class:`SettingError` naming the file and the problem."""

        def bad(why: str) -> SettingError:
            return SettingError(f"invalid baseline file {path}: {why}")

        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise SettingError(
                f"baseline file {path} does not exist; create it with --loopguard-baseline-update"
            ) from None
        except OSError as e:
            raise bad(f"cannot read it ({e.strerror or e})") from None
        try:
            data = json.loads(text)
        except ValueError as e:
            raise bad(f"not JSON ({e})") from None
        if not isinstance(data, dict):
            raise bad(f"expected a JSON object at the top, found {type(data).__name__}")
        if data.get("version") != BASELINE_VERSION:
            raise bad(f"unsupported version {data.get('version')!r}; expected {BASELINE_VERSION}")
        raw = data.get("sites")
        if not isinstance(raw, list):
            raise bad("expected a list under 'sites'")
        sites = set()
        for i, entry in enumerate(raw):
            if not (
                isinstance(entry, dict)
                and isinstance(entry.get("file"), str)
                and isinstance(entry.get("function"), str)
                and entry["file"]
                and entry["function"]
            ):
                raise bad(
                    f"sites[{i}] is {entry!r}; expected an object with non-empty string "
                    "'file' and 'function'"
                )
            sites.add((entry["file"], entry["function"]))
        return cls(path=path, sites=frozenset(sites))

    @staticmethod
    def dumps(sites: Iterable[tuple[str, str]]) -> str:
        """The file's text: sorted, one site per entry, so diffs are small and reviewable."""
        data = {
            "version": BASELINE_VERSION,
            "comment": (
                "loopguard baseline: these call sites may block the event loop without "
                "failing a test. Regenerate with --loopguard-baseline-update."
            ),
            "sites": [{"file": f, "function": fn} for f, fn in sorted(set(sites))],
        }
        return json.dumps(data, indent=2) + "\n"


# --- verdicts ------------------------------------------------------------------------------


class Verdict(Record):
    """One judged block. Final when :meth:`Judge.judge` returns it (or, for a test that pytest
    reported as skipped or xfailed, :meth:`Judge.not_failing`)."""

    _fields = (
        "event",
        "test",
        "phase",
        "threshold",
        "severity",
        "outcome",
        "reason",
        "mode",
        "key",
        "over_threshold",
        "start_ms",
    )
    __slots__ = _fields

    def __init__(
        self,
        event: BlockEvent,
        test: str,
        phase: str,
        threshold: float,
        severity: str,
        outcome: str,
        reason: Optional[str],
        mode: str,
        key: Optional[tuple[str, str]],
        over_threshold: bool = False,
        start_ms: Optional[float] = None,
    ) -> None:
        self.event = event
        """The block as judged: its ``threshold`` is :attr:`threshold`."""
        self.test = test
        self.phase = phase
        self.threshold = threshold
        """The threshold it was judged against (the test's, or ``guard()``'s)."""
        self.severity = severity
        self.outcome = outcome
        """One of :data:`OUTCOMES`."""
        self.reason = reason
        """Why it was allowed, baselined or recorded (``None`` for failed blocks)."""
        self.mode = mode
        self.key = key
        """The call site as the baseline knows it: ``(file relative to the rootdir,
        function)``."""
        self.over_threshold = over_threshold
        """True when the block would fail a test without the baseline and the mode (what
        ``--loopguard-baseline-update`` writes)."""
        self.start_ms = start_ms
        """When the block began, milliseconds since the epoch, as a report read back recorded
        it (a session's verdicts get theirs from the watchdog's clock when the report is
        written)."""

    def to_json(
        self, root: Optional[Path] = None, *, clock: int = 0, samples: bool = False
    ) -> dict[str, Any]:
        """One entry of the JSON report's ``"events"`` (docs/report-schema.json): the event's
        JSON (:meth:`BlockEvent.to_json`) and the verdict's fields. ``clock``: nanoseconds
        from the watchdog's clock to the epoch, for ``start_ms`` (0: :attr:`start_ms`)."""
        ev = self.event
        start_ms = self.start_ms
        if clock and ev.start_ns:
            start_ms = round((ev.start_ns + clock) / 1e6, 3)
        return {
            "test": self.test,
            "phase": self.phase,
            "start_ms": start_ms,
            "severity": self.severity,
            "outcome": self.outcome,
            "reason": self.reason,
            "mode": self.mode,
            "over_threshold": self.over_threshold,
            **ev.to_json(root, samples=samples),
            "threshold_ms": round(self.threshold * 1000.0, 6),
        }

    @classmethod
    def from_json(cls, d: Any, root: Optional[Path] = None) -> Verdict:
        """The verdict of :meth:`to_json`'s data (or of a report's entry written by an older
        loopguard); raises :class:`~loopguard._events.FormatError` naming what is wrong.
        ``root``: the report's file names are relative to it (``None``: keep them as they
        are)."""
        from ._events import BlockEvent, FormatError

        ev = BlockEvent.from_json(d, root)
        phase = d.get("phase")
        if not isinstance(phase, str):
            raise FormatError(f"expected 'phase' of type string, found {_kind(phase)}")
        for key, allowed in (("severity", SEVERITIES), ("outcome", OUTCOMES)):
            value = d.get(key)
            if value not in allowed:
                raise FormatError(
                    f"unknown {key} {value!r}; expected one of {', '.join(allowed)}"
                    if isinstance(value, str)
                    else f"expected {key!r} of type string, found {_kind(value)}"
                )
        reason, mode, start = d.get("reason"), d.get("mode") or "fail", d.get("start_ms")
        if reason is not None and not isinstance(reason, str):
            raise FormatError(f"expected 'reason' of type string or null, found {_kind(reason)}")
        if start is not None and (not isinstance(start, (int, float)) or isinstance(start, bool)):
            raise FormatError(f"expected 'start_ms' of type number or null, found {_kind(start)}")
        site = d.get("site")
        return cls(
            event=ev,
            test=d["test"],
            phase=phase,
            threshold=ev.threshold,
            severity=d["severity"],
            outcome=d["outcome"],
            reason=reason,
            mode=mode,
            # The call site as the baseline knows it: the file as the report names it.
            key=(site["file"], site["function"]) if ev.site is not None else None,
            over_threshold=_over_threshold(d),
            start_ms=start,
        )


def _kind(value: Any) -> str:
    return "nothing" if value is None else type(value).__name__


def _over_threshold(d: dict[str, Any]) -> bool:
    """Whether the block would fail its test without the baseline and the mode. Reports
    written before the field existed say it through the outcome and, for record mode, the
    reason."""
    if "over_threshold" in d:
        return bool(d["over_threshold"])
    return d["outcome"] in ("failed", "warned", "baselined") or (
        d["outcome"] == "recorded" and d.get("reason") == "mode record"
    )


_EXCUSE_HINTS = {
    "cpu-wait": "the machine was overloaded: the loop thread was ready to run but waited for a "
    "CPU for much of the block",
    "callbacks": "one loop iteration ran many short callbacks without polling for I/O: none "
    "blocked for the threshold by itself",
}

_HOLDER_WAIT_HINT = (
    "the machine was overloaded: the thread holding the GIL was ready to run but waited for a "
    "CPU for much of the starvation"
)

EXPECTED_REASON = "expected by loopguard.expect_block()"
WARNING_ERROR_REASON = "LoopBlockedWarning turned into an error by a warnings filter"
NOT_RUN_REASON = "the test was skipped or xfailed"


class Expectation(Protocol):
    """What the judge reads of an ``expect_block()`` (:class:`loopguard._fixture.ExpectBlock`):
    the least block it expects, where it was opened, and when it was open (``end_ns``:
    ``None`` while it still is)."""

    threshold: float
    where: str
    start_ns: int
    end_ns: Optional[int]
    events: list[BlockEvent]
    """The blocks it saw, in the phases judged so far."""


class Lag(Protocol):
    """What the judge reads of a test's loop lag (:class:`loopguard._fixture.LagStats`): its
    worst, and its text for the failure."""

    @property
    def max(self) -> float: ...


class Ruling(Record):
    """The judge's decision on one phase of a test (:meth:`Judge.judge_phase`), which the
    plugin's hooks only apply."""

    _fields = ("verdicts", "expected", "failures")
    __slots__ = _fields

    def __init__(
        self,
        verdicts: list[Verdict],
        expected: list[tuple[Expectation, BlockEvent]],
        failures: list[str],
    ) -> None:
        self.verdicts = verdicts
        """The verdict on each block kept (in the order the blocks were logged)."""
        self.expected = expected
        """Each block an ``expect_block()`` covered, for its ``events``."""
        self.failures = failures
        """Why the phase fails besides its blocks, first reason first: an ``expect_block()``
        opened in it saw no block, its loop lag went over ``max_lag``."""


class Judge:
    """Judges blocks under the session's settings (allow patterns, scan, baseline, what counts
    toward a block) and a test's (threshold, mode, its markers' allow patterns)."""

    def __init__(
        self,
        root: Path,
        *,
        allow: tuple[AllowPattern, ...] = (),
        scan: tuple[str, ...] = (),
        baseline: Optional[Baseline] = None,
        baseline_update: bool = False,
        gc: str = "exclude",
        cpu_wait: str = "exclude",
    ) -> None:
        self.root = root
        self.gc = gc
        self.cpu_wait = cpu_wait
        self.allow = allow
        self.scan = scan
        self.baseline = baseline
        self.baseline_update = baseline_update

    def site_key(self, ev: BlockEvent) -> Optional[tuple[str, str]]:
        if ev.site is None:
            return None
        return relative_path(ev.site.filename, self.root), ev.site.function

    def judge(
        self,
        ev: BlockEvent,
        *,
        test: str,
        phase: str,
        threshold: float,
        mode: str,
        allow: tuple[AllowPattern, ...] = (),
        expected: bool = False,
        orphan: Optional[str] = None,
        warn: Optional[Callable[[BlockEvent], bool]] = None,
    ) -> Verdict:
        """The verdict on ``ev`` under ``threshold`` and ``mode``, in the order of this module's
        docstring; then, in this order:

        * ``expected``: a ``loopguard.expect_block()`` of the test covered it: *allowed*;
        * ``orphan``: why no test report can carry it (it began outside any test, or ended after
          its test had finished): one that would fail or warn is *recorded*, with that reason;
        * ``warn``: emits a warned block's ``LoopBlockedWarning`` and returns False when a
          warnings filter turned it into an error: the block then *fails* its test.
        """
        ev = dataclasses.replace(ev, threshold=threshold)
        outcome, reason, over = self._decide(ev, threshold, mode, allow)
        if expected:
            outcome, reason, over = "allowed", EXPECTED_REASON, False
        elif orphan is not None and outcome in ("failed", "warned"):
            outcome, reason, over = "recorded", orphan, False
        elif outcome == "warned" and warn is not None and not warn(ev):
            outcome, reason = "failed", WARNING_ERROR_REASON
        return Verdict(
            event=ev,
            test=test,
            phase=phase,
            threshold=threshold,
            severity=severity(ev.duration, threshold),
            outcome=outcome,
            reason=reason,
            mode=mode,
            key=self.site_key(ev),
            over_threshold=over,
        )

    def judge_phase(
        self,
        events: Iterable[BlockEvent],
        *,
        test: str,
        phase: str,
        threshold: float,
        mode: str,
        allow: tuple[AllowPattern, ...] = (),
        floor: float,
        expects: Sequence[tuple[str, Expectation]] = (),
        now_ns: Optional[int] = None,
        max_lag: Optional[float] = None,
        lag: Optional[Callable[[], Lag]] = None,
        warn: Optional[Callable[[BlockEvent], bool]] = None,
        finished: bool = True,
    ) -> Ruling:
        """The ruling on phase ``phase`` of ``test``, whose blocks are ``events``, under the
        test's settings (``threshold``, ``mode``, its markers' ``allow``):

        * a block shorter than ``floor`` (the least worth keeping) gets no verdict;
        * a block that one of ``expects`` (the test's ``expect_block()`` contexts, each with
          the phase that opened it) covers, at least as long as the expected block and inside
          the context (one still open: until ``now_ns``, the phase's end; to this day without
          it), is *allowed*;
        * otherwise :meth:`judge` decides, ``warn`` emitting a warned block's warning.

        ``finished``: the phase ran to its end. Only then are warnings emitted, and does the
        phase fail when an ``expect_block()`` opened in it saw no block, or when the loop lag
        (``lag()``: since the phase began) went over ``max_lag``. A phase that raised fails
        anyway: its blocks are only judged.
        """
        verdicts: list[Verdict] = []
        expected: list[tuple[Expectation, BlockEvent]] = []
        for ev in events:
            if ev.duration < floor:
                continue  # too short to keep
            covering = [e for _, e in expects if _covers(e, ev, now_ns)]
            v = self.judge(
                ev,
                test=test,
                phase=phase,
                threshold=threshold,
                mode=mode,
                allow=allow,
                expected=bool(covering),
                warn=warn if finished else None,
            )
            expected.extend((e, v.event) for e in covering)
            verdicts.append(v)
        failures: list[str] = []
        if finished:
            for opened_in, e in expects:
                if opened_in == phase and not e.events and not any(x is e for x, _ in expected):
                    failures.append(
                        "loopguard: expected the event loop to block for at least "
                        f"{format_duration(e.threshold)} inside expect_block() ({e.where}), "
                        "but it did not"
                    )
            if max_lag is not None and lag is not None:
                stats = lag()
                if stats.max > max_lag:
                    failures.append(
                        f"loopguard: event loop lag {format_duration(stats.max)} exceeded "
                        f"max_lag {format_duration(max_lag)} (from @pytest.mark.loopguard on "
                        f"{test}); lag {stats}"
                    )
        return Ruling(verdicts, expected, failures)

    def judge_stray(
        self,
        ev: BlockEvent,
        *,
        threshold: float,
        mode: str,
        allow: tuple[AllowPattern, ...] = (),
        enabled: bool = True,
        floor: float,
    ) -> Optional[Verdict]:
        """The verdict on a block that no test report can carry any more: one that began
        outside any test (judged under the session's settings), or ended after its test had
        finished (under that test's). ``None`` when it is not kept: its test ran with
        loopguard disabled, or it is shorter than ``floor``. Its outcome is never *failed* or
        *warned* (see :meth:`judge`'s ``orphan``)."""
        if not enabled or ev.duration < floor:
            return None
        if ev.test is None:
            test, phase, orphan = "", "outside", "began outside any test"
        else:
            test, phase, orphan = ev.test, ev.phase or "call", "ended after its test had finished"
        return self.judge(
            ev, test=test, phase=phase, threshold=threshold, mode=mode, allow=allow, orphan=orphan
        )

    @staticmethod
    def not_failing(v: Verdict) -> Verdict:
        """``v`` for a test that pytest reported as skipped or xfailed: a failing block is
        *recorded* (no failure to report it in)."""
        if v.outcome != "failed":
            return v
        return v.replace(outcome="recorded", reason=NOT_RUN_REASON, over_threshold=False)

    def _decide(
        self, ev: BlockEvent, threshold: float, mode: str, allow: tuple[AllowPattern, ...]
    ) -> tuple[str, Optional[str], bool]:
        """``(outcome, reason, over the threshold)``: the last is True from the baseline on,
        where only the baseline and the mode keep the block from failing its test."""
        if ev.duration < threshold:
            return "recorded", "under the threshold", False
        excused = excuse(
            ev, threshold, gc=self.gc, cpu_wait=self.cpu_wait, interrupted=mode == "raise"
        )
        if excused is not None:
            ev.cause, reason = excused
            waited, by_holder = ev.machine_wait()
            if excused[0] == "cpu-wait" and by_holder >= waited / 2:
                ev.hint = _HOLDER_WAIT_HINT
            elif excused[0] in _EXCUSE_HINTS:
                ev.hint = _EXCUSE_HINTS[excused[0]]
            return "recorded", reason, False
        frames = [*ev.stack, *ev.gil_holder_stack]
        if self.scan and not any(_in_packages(f, self.scan) for f in frames):
            return "allowed", "outside loopguard_scan", False
        for pattern in (*allow, *self.allow):
            if any(pattern.matches(f.filename, f.function, self.root) for f in frames):
                return "allowed", f"allow {pattern.text!r} ({pattern.source})", False
        if self.baseline_update:
            return "baselined", "written to the baseline", True
        if self.baseline is not None:
            key = self.site_key(ev)
            if key is not None and key in self.baseline.sites:
                return "baselined", f"in the baseline {self.baseline.path.name}", True
        if mode == "warn":
            return "warned", "mode warn", True
        if mode == "record":
            return "recorded", "mode record", True
        return "failed", None, True


def _covers(expect: Expectation, ev: BlockEvent, now_ns: Optional[int]) -> bool:
    """Whether ``expect`` covers ``ev``: at least as long as the block it expects, and
    overlapping the time it was open (until ``now_ns`` if it still is; ``None``: no end)."""
    end = expect.end_ns if expect.end_ns is not None else now_ns
    if end is None:
        return ev.duration >= expect.threshold and ev.end_ns > expect.start_ns
    return ev.duration >= expect.threshold and ev.start_ns < end and ev.end_ns > expect.start_ns
