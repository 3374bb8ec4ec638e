"""``offload_check()``: did work handed to a thread really leave the event loop's CPU?

While a check is open, a native sampler thread (no Python thread state; it never takes the GIL)
reads every millisecond which thread holds the GIL, and every 5 ms the list of Python threads and
each one's CPU time (``/proc/self/task/TID/schedstat``); it walks the stacks of the GIL holder
and of every thread that used CPU, without the GIL. Nothing is sampled outside a check.

A thread's *busy time* is the larger of its CPU time and its GIL-held time inside the check; its
*GIL share* is the part of that it held the GIL. Work in a thread that holds the GIL (pure Python)
still competes with the loop thread for the one GIL: the loop answers late however many threads
there are. Work that releases the GIL (system calls, ``hashlib`` on large buffers, Pillow's
filters, ``sqlite3`` queries, ``time.sleep``) has a share near 0.

Loop blocks: those of the loop the check runs in (watched from the check's start, whoever
started the loop: see ``Runtime.attach``) and of loops watched anyway (the plugin's, or loops
that start inside the check).

What it cannot see: a thread that lived less than 5 ms and never held the GIL at a reading; GIL
hand-overs shorter than a millisecond (shares are estimates, good to a few percent over tens
of milliseconds of work); threads of sub-interpreters; and, on CPython 3.10 (whose thread states
do not record the kernel's thread id), CPU time: there busy time is GIL-held time only.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from . import _native
from ._decode import site_of, thread_name
from ._errors import OffloadError
from ._events import BlockEvent, Frame
from ._failure import format_events
from ._judge import Judge
from ._parse import DEFAULT_THRESHOLD, environment_sampler, format_duration, parse_duration
from ._runtime import runtime

__all__ = ["OffloadCheck", "OffloadError", "ThreadActivity", "offload_check"]

DEFAULT_MAX_GIL_SHARE = 0.5
SAMPLE_INTERVAL = 0.001
THREADS_EVERY = 5

ADVICE = (
    "a thread does not take this work off the loop's CPU; use a process pool, slice the work, "
    "or a library call that releases the GIL"
)

_LOOP_FILES = (
    os.sep + os.path.join("asyncio", "base_events.py"),
    os.sep + os.path.join("trio", "_core", "_run.py"),
    "uvloop" + os.sep,
)


@dataclass(frozen=True)
class ThreadActivity:
    """One thread that ran inside an ``offload_check()``."""

    name: str
    ident: int
    native_id: Optional[int]
    role: str
    """``"loop"`` (its busiest stack runs an event loop, or a loop block inside the check was its
    own), ``"caller"`` (the thread that opened the check) or ``"worker"``: only workers are
    judged by ``assert_offloaded()``."""
    busy: float
    """Seconds it used a CPU or held the GIL inside the check (the larger of the two)."""
    gil_held: float
    """Seconds it held the GIL (estimated from the readings)."""
    cpu: Optional[float]
    """Seconds of CPU it used inside the check (None when unknown)."""
    site: Optional[Frame]
    """Its dominant call site: the user-code frame most of its busy time was spent under."""
    gil_site: Optional[Frame]
    """The call site most of its GIL-held time was spent under."""
    started_inside: bool
    stack: list[Frame] = field(default_factory=list)
    """The stack most of its busy time was seen in, outermost first."""

    @property
    def gil_share(self) -> float:
        """The part of its busy time it held the GIL (0 when it was not busy)."""
        return min(1.0, self.gil_held / self.busy) if self.busy > 0 else 0.0

    def __str__(self) -> str:
        site = f" at {self.site}" if self.site else ""
        return (
            f"{self.role} '{self.name}': busy {format_duration(self.busy)}, "
            f"GIL {self.gil_share:.0%}{site}"
        )


def _parse_share(value: Any, source: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError(
            f"invalid value for max_gil_share: {value!r} (from {source}); "
            "expected a number between 0 and 1"
        )
    return float(value)


def _is_loop_stack(stack: list[Frame]) -> bool:
    return any(f.filename.endswith(_LOOP_FILES[:2]) or _LOOP_FILES[2] in f.filename for f in stack)


class OffloadCheck:
    """A context manager (``with`` or ``async with``) that records, for the code inside, every
    thread's busy time and GIL share, and the event-loop blocks. Judge it afterwards with
    :meth:`assert_offloaded`. Each check is used once; checks nest.

    The loop the check runs in is watched from the check's start, even when nothing watched
    it before (no plugin, or a loop that started before the watchdog was wanted). A loop block
    is complete once the loop gets back to its selector: ``async with`` lets it before
    closing; a plain ``with`` on the loop thread may not see a block that is still going on at
    its end (it does when the check itself started watching the loop)."""

    def __init__(
        self,
        threshold: Union[str, float, None] = None,
        *,
        min_busy: Union[str, float, None] = None,
        source: str = "loopguard.offload_check()",
    ) -> None:
        self.threshold = (
            DEFAULT_THRESHOLD
            if threshold is None
            else parse_duration(threshold, name="threshold", source=source)
        )
        self.min_busy = (
            self.threshold / 2
            if min_busy is None
            else parse_duration(min_busy, name="min_busy", source=source)
        )
        self._source = source
        self.threads: list[ThreadActivity] = []
        """The threads that ran inside (busiest first), once the check has closed."""
        self.events: list[BlockEvent] = []
        """The loop blocks (and starvations) longer than ``threshold`` inside the check."""
        self.duration = 0.0
        self.readings = 0
        self._state = "new"
        self._token = 0
        self._start_ns = 0
        self._sampler: Any = None
        self._caller = 0
        self._attached: Optional[object] = None

    # --- context manager ------------------------------------------------------------------

    def __enter__(self) -> OffloadCheck:
        if self._state != "new":
            raise RuntimeError(
                f"this offload_check() was already {self._state}; "
                "call offload_check() again for a new check"
            )
        self._token = runtime.acquire(self.threshold, environment_sampler())
        try:
            self._sampler = _native.OffloadSampler(SAMPLE_INTERVAL, THREADS_EVERY)
        except (RuntimeError, ValueError) as e:
            runtime.release(self._token)
            raise RuntimeError(f"loopguard: offload_check() cannot sample threads here: {e}") from e
        self._caller = threading.get_ident()
        self._start_ns = _native.now_ns()
        # The loop running this code (if any) is watched from now on, even if it started
        # running before anything watched loops.
        self._attached = runtime.attach()
        self._state = "open"
        return self

    def __exit__(self, *exc: object) -> None:
        if self._state != "open":
            return
        self._state = "closed"
        try:
            with runtime.own_wait():
                raw = self._sampler.finish()
                end_ns = _native.now_ns()
                # Leaving the loop this check attached closes a block still in progress on it.
                attached, self._attached = self._attached, None
                runtime.detach(attached)
                runtime.collect()
            seen = runtime.events_inside(self._start_ns, end_ns, self.threshold)
        finally:
            self._sampler = None
            runtime.detach(self._attached)
            runtime.release(self._token)
        # Judged as guard() judges its blocks, under the check's threshold (each event's is
        # the check's), with nothing allowed: the blocks that fail are the check's.
        judge = Judge(Path.cwd())
        verdicts = [
            judge.judge(e, test="", phase="", threshold=self.threshold, mode="fail") for e in seen
        ]
        self.events = [v.event for v in verdicts if v.outcome == "failed"]
        self.duration = (end_ns - self._start_ns) / 1e9
        self.readings = int(raw["ticks"])
        loop_idents = {e.thread_ident for e in self.events}
        self.threads = sorted(
            (t for t in (self._activity(d, loop_idents) for d in raw["threads"]) if t.busy > 0),
            key=lambda t: -t.busy,
        )

    async def __aenter__(self) -> OffloadCheck:
        return self.__enter__()

    async def __aexit__(self, *exc: object) -> None:
        # A block is complete once its loop gets back to its selector: let it, so that a block
        # in the last step inside the check is seen.
        await _yield_to_loop()
        self.__exit__(*exc)

    def _activity(self, d: dict[str, Any], loop_idents: set[int]) -> ThreadActivity:
        stacks = [
            (held, cpu, [Frame(f, int(n), fn) for f, n, fn in frames])
            for held, cpu, frames in d["stacks"]
        ]
        ident = int(d["ident"])
        top = max(stacks, key=lambda x: (x[0] + x[1], x[0]))[2] if stacks else []
        if ident in loop_idents or _is_loop_stack(top):
            role = "loop"
        elif ident == self._caller:
            role = "caller"
        else:
            role = "worker"
        held = d["held_ns"] / 1e9
        cpu = None if d["cpu_ns"] is None else d["cpu_ns"] / 1e9
        busy_sites: Counter[Frame] = Counter()
        gil_sites: Counter[Frame] = Counter()
        for h, c, s in stacks:
            site = site_of(s)
            if site is not None:
                busy_sites[site] += h + c
                if h:
                    gil_sites[site] += h
        return ThreadActivity(
            name=thread_name(ident),
            ident=ident,
            native_id=d["native_id"],
            role=role,
            busy=max(held, cpu or 0.0),
            gil_held=held,
            cpu=cpu,
            site=busy_sites.most_common(1)[0][0] if busy_sites else None,
            gil_site=gil_sites.most_common(1)[0][0] if gil_sites else None,
            started_inside=not d["existed_at_start"],
            stack=top,
        )

    # --- verdict --------------------------------------------------------------------------

    def offenders(self, max_gil_share: float = DEFAULT_MAX_GIL_SHARE) -> list[ThreadActivity]:
        """Worker threads busy for at least ``min_busy`` that held the GIL for more than
        ``max_gil_share`` of their busy time."""
        share = _parse_share(max_gil_share, "assert_offloaded()")
        return [
            t
            for t in self.threads
            if t.role == "worker" and t.busy >= self.min_busy and t.gil_share > share
        ]

    def assert_offloaded(self, max_gil_share: float = DEFAULT_MAX_GIL_SHARE) -> None:
        """Fails (:class:`OffloadError`) when a loop blocked or was starved for longer than the
        threshold inside the check, or when a worker thread held the GIL for more than
        ``max_gil_share`` (0 to 1) of its busy time."""
        __tracebackhide__ = True
        if self._state != "closed":
            raise RuntimeError(
                "assert_offloaded() judges a closed check: call it after the with block"
            )
        bad = self.offenders(max_gil_share)
        if not self.events and not bad:
            return
        raise OffloadError(self.report(max_gil_share))

    def report(self, max_gil_share: float = DEFAULT_MAX_GIL_SHARE) -> str:
        """The text ``assert_offloaded()`` fails with (also useful when it passes)."""
        share = _parse_share(max_gil_share, "report()")
        bad = self.offenders(share)
        parts: list[str] = []
        if self.events:
            parts.append(format_events(self.events))
        if bad:
            lines = [
                f"loopguard: offloaded work held the GIL inside offload_check() "
                f"(max_gil_share {share:.0%})",
                "",
            ]
            for t in bad:
                site = t.gil_site or t.site
                where = f" at {site}" if site else ""
                lines.append(
                    f"    worker '{t.name}' held the GIL {t.gil_share:.0%} of its "
                    f"{format_duration(t.busy)}{where}"
                )
                if site is not None and site.source:
                    lines.append(f"  >     {site.source}")
            lines += ["", f"  {ADVICE}"]
            parts.append("\n".join(lines))
        parts.append(self.table())
        return "\n\n".join(parts)

    def table(self) -> str:
        """The threads that ran inside, as a small table."""
        head = (
            f"  threads inside the check ({format_duration(self.duration)}, "
            f"{self.readings} GIL readings):"
        )
        if not self.threads:
            return head + "\n    (none busy)"
        rows = [head]
        for t in self.threads:
            cpu = "?" if t.cpu is None else format_duration(t.cpu)
            born = ", started inside" if t.started_inside else ""
            site = f" at {t.site}" if t.site else ""
            rows.append(
                f"    {t.role} '{t.name}': busy {format_duration(t.busy)} (CPU {cpu}), "
                f"GIL {t.gil_share:.0%}{born}{site}"
            )
        return "\n".join(rows)

    def __repr__(self) -> str:
        return f"<loopguard offload_check {self._state}, {len(self.threads)} threads>"


async def _yield_to_loop() -> None:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        await asyncio.sleep(0)
        return
    trio = sys.modules.get("trio")
    if trio is not None:
        try:
            await trio.sleep(0)
        except RuntimeError:
            pass


def offload_check(
    threshold: Union[str, float, None] = None, *, min_busy: Union[str, float, None] = None
) -> OffloadCheck:
    """Record which threads ran inside the block, their busy time and GIL share, and the loop's
    blocks; judge with ``check.assert_offloaded(max_gil_share=0.5)``. Works without the plugin
    (``threshold`` defaults to the plugin's default threshold; ``min_busy``, half the threshold
    by default, is the least busy time of a worker that is judged: shorter work cannot hold the
    loop past the threshold)."""
    return OffloadCheck(threshold, min_busy=min_busy)
