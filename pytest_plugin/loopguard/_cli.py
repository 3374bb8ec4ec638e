"""``python -m loopguard``: JSON reports after the session.

* ``merge REPORT... -o OUT``: the reports of a suite's shards as one report (:mod:`._merge`);
* ``summary REPORT...``: the hotspot table, as the session prints it; ``--github`` adds the
  workflow commands that annotate the pull request;
* ``baseline REPORT... -o FILE``: the baseline file ``--loopguard-baseline-update`` would
  write had one session run every shard's tests;
* ``html REPORT... -o FILE``: the HTML report (:mod:`._html`);
* ``run [OPTIONS] -- COMMAND [ARGS...]``: a program run with its event loops watched
  (:mod:`._run`).

Commands that take several reports merge them first, with the same checks as ``merge``. A bad
input (a missing file, a file that is not a report, a newer schema, two reports of the same
run, an output path that cannot be written) is an error on stderr naming it, with exit status
2, and nothing is written; files are written atomically.

A report of a run that guarded no test (none was selected, or every one ran with loopguard
disabled) is not a clean run: ``summary`` and ``merge`` say so on stderr and exit with status 5
(pytest's own for a run that collected no test), and ``baseline`` refuses to write a baseline
of it, unless ``--allow-empty``; ``html`` writes the page and says so in it. A report written
before reports counted the guarded tests is read as "not known", with a note.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

from ._errors import SettingError
from ._judge import Baseline, Verdict
from ._merge import baseline_sites, merge
from ._report import (
    annotations,
    check_writable,
    fixed_lines,
    report_chunks,
    summary_lines,
    write_atomically,
)
from ._reportfile import Report, ReportError, read_report

__all__ = ["main"]

USAGE_ERROR = 2
NOTHING_GUARDED = 5
"""Exit status when the reports guarded no test (pytest's own when it collects none)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse's own errors: same prefix, same status
        self.print_usage(sys.stderr)
        self.exit(USAGE_ERROR, f"loopguard: error: {message}\n")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="python -m loopguard",
        description="Work with loopguard's JSON reports (pytest --loopguard-json=PATH).",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    def reports(cmd: argparse.ArgumentParser, what: str) -> None:
        cmd.add_argument("reports", nargs="+", type=Path, metavar="REPORT", help=what)

    def output(cmd: argparse.ArgumentParser, what: str) -> None:
        cmd.add_argument("-o", "--output", required=True, type=Path, metavar="PATH", help=what)

    def allow_empty(cmd: argparse.ArgumentParser) -> None:
        cmd.add_argument(
            "--allow-empty",
            action="store_true",
            help="accept reports of runs that guarded no test (by default an error, exit "
            f"status {NOTHING_GUARDED}: no test selected, or every one disabled)",
        )

    m = sub.add_parser("merge", help="merge the reports of a suite's shards into one report")
    reports(m, "a JSON report of one shard (or a merged report)")
    output(m, "where to write the merged report")
    allow_empty(m)

    s = sub.add_parser("summary", help="print the hotspot table of a report")
    reports(s, "a JSON report (several are merged first)")
    s.add_argument("-v", "--verbose", action="count", default=0, help="list the tests of a row")
    s.add_argument(
        "-q", "--quiet", action="count", default=0, help="top 5 rows; twice: the totals only"
    )
    s.add_argument(
        "--github",
        action="store_true",
        help="also print GitHub Actions workflow commands that annotate the blocking lines",
    )
    s.add_argument(
        "--rootdir",
        type=Path,
        default=None,
        help="the rootdir of the run, for --github paths (default: the current directory); "
        "annotations are relative to $GITHUB_WORKSPACE when it is set",
    )
    allow_empty(s)

    b = sub.add_parser(
        "baseline", help="write the baseline file from the reports of every shard of a run"
    )
    reports(b, "a JSON report of one shard; all of them make the baseline")
    output(b, "the baseline file to write")
    allow_empty(b)

    h = sub.add_parser("html", help="write a self-contained HTML report")
    reports(h, "a JSON report (several are merged first)")
    output(h, "the HTML file to write")
    # Parsed by loopguard._run (main() hands it the arguments): listed here for --help.
    sub.add_parser(
        "run", help="run a Python program with its event loops watched (run --help)", add_help=False
    )
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["run"]:
        from ._run import main as run

        return run(argv[1:])
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return USAGE_ERROR
    try:
        return _COMMANDS[args.command](args)
    except (ReportError, SettingError) as e:
        print(f"loopguard: error: {e}", file=sys.stderr)
        return USAGE_ERROR
    except OSError as e:  # writing the output failed after the checks (a full disk)
        print(f"loopguard: error: {e}", file=sys.stderr)
        return USAGE_ERROR


def _load(paths: list[Path]) -> tuple[list[Report], dict[str, Any], list[Verdict]]:
    """The reports, and their data and verdicts (merged when there are several)."""
    reports = [read_report(p) for p in paths]
    if len(reports) == 1:
        return reports, reports[0].data, reports[0].verdicts
    return reports, merge(reports), [v for r in reports for v in r.verdicts]


def _names(reports: list[Report]) -> str:
    return ", ".join(str(r.path) for r in reports)


def _nothing_guarded(reports: list[Report], *, allow_empty: bool) -> bool:
    """Whether the reports guarded no test and that is an error (said on stderr); a note when
    it is allowed, or not known."""
    counts = [r.guarded for r in reports]
    guarded = sum(n for n, _ in counts)
    if guarded:
        return False
    names = _names(reports)
    if not all(complete for _, complete in counts):
        unknown = _names(
            [r for r, (_, complete) in zip(reports, counts, strict=True) if not complete]
        )
        print(
            f"loopguard: note: {unknown}: the report does not say how many tests were guarded "
            "(written by an older loopguard): a run that guarded no test cannot be told from "
            "a clean one",
            file=sys.stderr,
        )
        return False
    if allow_empty:
        print(
            f"loopguard: note: {names}: no test was guarded (allowed by --allow-empty)",
            file=sys.stderr,
        )
        return False
    print(
        f"loopguard: error: {names}: NO TEST WAS GUARDED: no test ran with loopguard enabled "
        "(none was selected, or every one was disabled, e.g. by "
        "@pytest.mark.loopguard(enabled=False)), so nothing was checked: this is not a clean "
        "run. Pass --allow-empty if a run that guards nothing is expected.",
        file=sys.stderr,
    )
    return True


def _check_output(args: argparse.Namespace) -> Path:
    path: Path = args.output
    check_writable(path, name="-o", source="the command line")
    return path


def _merge(args: argparse.Namespace) -> int:
    out = _check_output(args)
    reports = [read_report(p) for p in args.reports]
    data = merge(reports)
    write_atomically(out, report_chunks(data))
    t = data["totals"]
    print(
        f"loopguard: merged {len(args.reports)} reports ({t['events']} blocks in "
        f"{t['tests']} tests) into {out}"
    )
    return NOTHING_GUARDED if _nothing_guarded(reports, allow_empty=args.allow_empty) else 0


def _summary(args: argparse.Namespace) -> int:
    reports, data, vs = _load(args.reports)
    if vs:
        for text, _ in summary_lines(vs, args.verbose - args.quiet):
            print(text)
    else:
        print("no blocks")
    fixed = [(f["file"], f["function"]) for f in data["fixed"]]
    if fixed:
        print("\n".join(fixed_lines(fixed)))
    if args.github:
        root = args.rootdir or Path.cwd()
        for text in annotations(vs, root=root, workspace=os.environ.get("GITHUB_WORKSPACE")):
            print(text)
    return NOTHING_GUARDED if _nothing_guarded(reports, allow_empty=args.allow_empty) else 0


def _baseline(args: argparse.Namespace) -> int:
    out = _check_output(args)
    if out.exists():
        Baseline.load(out)  # refuses to overwrite something that is not a baseline
    reports = [read_report(p) for p in args.reports]
    for r in reports:
        if any(run.get("interrupted") for run in r.runs):
            raise ReportError(
                f"{r.path}: the run was interrupted, so it did not see every call site; "
                "expected reports of complete runs"
            )
    if len(reports) > 1:
        merge(reports)  # the same checks: shards of one run
    if _nothing_guarded(reports, allow_empty=args.allow_empty):
        # Its baseline would be empty, and would tolerate no site of the suite's next run.
        print(f"loopguard: baseline not written ({out})", file=sys.stderr)
        return NOTHING_GUARDED
    sites = baseline_sites([v for r in reports for v in r.verdicts])
    write_atomically(out, Baseline.dumps(sites))
    print(f"loopguard: baseline written to {out} ({len(sites)} call site{'s' * (len(sites) != 1)})")
    return 0


def _html(args: argparse.Namespace) -> int:
    from ._html import render

    out = _check_output(args)
    reports, data, _ = _load(args.reports)
    write_atomically(out, render(data))
    print(f"loopguard: HTML report written to {out}")
    guarded = [r.guarded for r in reports]
    if all(complete for _, complete in guarded) and not sum(n for n, _ in guarded):
        # Not a gate: the page says so at its top; the gates are summary, merge and baseline.
        print(f"loopguard: note: {_names(reports)}: no test was guarded", file=sys.stderr)
    return 0


_COMMANDS = {"merge": _merge, "summary": _summary, "baseline": _baseline, "html": _html}
