"""Reports of the shards of one suite merged into the report of the whole run.

A suite split over several CI jobs (a matrix, pytest-split, ``-k`` expressions) writes one
JSON report per job; each sees only its own tests. :func:`merge` makes one report of them, in
the same schema, as if one session had run every test:

* every event of every shard, once (two reports of the same run, or two shards that both ran
  a test, are refused: their events would be counted twice);
* the settings must be the same in every shard (the verdicts were reached under them), and so
  must the environment, but for the sampler in use, which is kept only when all agree;
* per-test totals side by side, totals recounted (with the same function a session uses),
  the guarded tests summed;
* the baseline's ``fixed`` sites: those no shard saw block (each shard lists those it did not
  see; a site is fixed when it is in every shard's list);
* ``runs``: every shard's run, so a merged report merges again without double counting.
"""

from __future__ import annotations

from typing import Any

from ._judge import Verdict
from ._report import REPORT_VERSION, totals
from ._reportfile import Report, ReportError

__all__ = ["baseline_sites", "merge"]

_ENVIRONMENT_AGREES = ("python", "implementation", "platform", "pytest", "loopguard")


def merge(reports: list[Report]) -> dict[str, Any]:
    """One report of every shard's events; raises :class:`ReportError` when they do not
    belong to one suite run in shards."""
    if not reports:
        raise ReportError("no reports to merge")
    first = reports[0]
    _check_runs(reports)
    _check_tests(reports)
    _check_agree(reports, "settings", None)
    _check_agree(reports, "environment", _ENVIRONMENT_AGREES)

    environment = dict(first.data["environment"])
    samplers = {r.data["environment"].get("sampler") for r in reports}
    environment["sampler"] = samplers.pop() if len(samplers) == 1 else None
    tests = sorted((t for r in reports for t in r.data["tests"]), key=lambda t: t["test"])
    fixed = _fixed(reports)
    runs = [run for r in reports for run in r.runs]
    return {
        "version": REPORT_VERSION,
        "settings": first.data["settings"],
        "environment": environment,
        "totals": totals([v for r in reports for v in r.verdicts], runs),
        "tests": tests,
        # Each shard's entries as they were written (checked on reading): with any key a newer
        # writer of this version added.
        "events": [e for r in reports for e in r.data["events"]],
        "fixed": [{"file": f, "function": fn} for f, fn in fixed],
        "runs": runs,
    }


def baseline_sites(verdicts: list[Verdict]) -> list[tuple[str, str]]:
    """The call sites ``--loopguard-baseline-update`` would write after this run: those of
    the blocks that would fail a test without the baseline and the mode."""
    return sorted({v.key for v in verdicts if v.over_threshold and v.key is not None})


def _check_runs(reports: list[Report]) -> None:
    seen: dict[str, Report] = {}
    for r in reports:
        for run in r.runs:
            other = seen.get(run["id"])
            if other is not None:
                same = "is given twice" if other.path == r.path else f"and {r.path} are"
                raise ReportError(
                    f"{other.path} {same} reports of the same run (run {run['id']}); "
                    "expected one report per shard"
                    + ("" if other.path == r.path else " (is one of them merged from the other?)")
                )
            seen[run["id"]] = r


def _check_tests(reports: list[Report]) -> None:
    owner: dict[str, Report] = {}
    for r in reports:
        for t in r.data["tests"]:
            name = t.get("test") if isinstance(t, dict) else None
            if not isinstance(name, str):
                raise ReportError(f"{r.path}: expected objects with a 'test' under 'tests'")
            other = owner.setdefault(name, r)
            if other is not r:
                raise ReportError(
                    f"{other.path} and {r.path} both ran the test {name}: the shards overlap, "
                    "so its blocks would be counted twice; expected shards that split the tests"
                )


def _check_agree(reports: list[Report], section: str, keys: Any) -> None:
    first = reports[0]
    base = first.data[section]
    for r in reports[1:]:
        other = r.data[section]
        names = keys if keys is not None else sorted(set(base) | set(other))
        differ = [k for k in names if base.get(k) != other.get(k)]
        if differ:
            detail = "; ".join(
                f"{k}: {base.get(k)!r} in {first.path}, {other.get(k)!r} in {r.path}"
                for k in differ
            )
            raise ReportError(
                f"the reports disagree on their {section} ({detail}); expected shards of one "
                f"run, with the same {section}"
            )


def _fixed(reports: list[Report]) -> list[tuple[str, str]]:
    sets = [
        {(f["file"], f["function"]) for f in r.data["fixed"] if isinstance(f, dict)}
        for r in reports
    ]
    return sorted(set.intersection(*sets)) if sets else []
