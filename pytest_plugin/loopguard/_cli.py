"""``python -m loopguard``: JSON reports after the session.

* ``merge REPORT... -o OUT``: the reports of a suite's shards as one report (:mod:`._merge`);
* ``summary REPORT...``: the hotspot table, as the session prints it; ``--github`` adds the
  workflow commands that annotate the pull request;
* ``baseline REPORT... -o FILE``: the baseline file ``--loopguard-baseline-update`` would
  write had one session run every shard's tests;
* ``html REPORT... -o FILE``: the HTML report (:mod:`._html`).

Commands that take several reports merge them first, with the same checks as ``merge``. A bad
input (a missing file, a file that is not a report, a newer schema, two reports of the same
run, an output path that cannot be written) is an error on stderr naming it, with exit status
2, and nothing is written; files are written atomically.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

from ._errors import SettingError
from ._judge import Baseline
from ._merge import baseline_sites, merge
from ._report import (
    annotations,
    check_writable,
    fixed_lines,
    report_chunks,
    summary_lines,
    write_atomically,
)
from ._reportfile import ReportError, read_report, verdicts

__all__ = ["main"]

USAGE_ERROR = 2


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

    m = sub.add_parser("merge", help="merge the reports of a suite's shards into one report")
    reports(m, "a JSON report of one shard (or a merged report)")
    output(m, "where to write the merged report")

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

    b = sub.add_parser(
        "baseline", help="write the baseline file from the reports of every shard of a run"
    )
    reports(b, "a JSON report of one shard; all of them make the baseline")
    output(b, "the baseline file to write")

    h = sub.add_parser("html", help="write a self-contained HTML report")
    reports(h, "a JSON report (several are merged first)")
    output(h, "the HTML file to write")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
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


def _load(paths: list[Path]) -> dict[str, Any]:
    reports = [read_report(p) for p in paths]
    return reports[0].data if len(reports) == 1 else merge(reports)


def _check_output(args: argparse.Namespace) -> Path:
    path: Path = args.output
    check_writable(path, name="-o", source="the command line")
    return path


def _merge(args: argparse.Namespace) -> int:
    out = _check_output(args)
    data = merge([read_report(p) for p in args.reports])
    write_atomically(out, report_chunks(data))
    t = data["totals"]
    print(
        f"loopguard: merged {len(args.reports)} reports ({t['events']} blocks in "
        f"{t['tests']} tests) into {out}"
    )
    return 0


def _summary(args: argparse.Namespace) -> int:
    data = _load(args.reports)
    vs = verdicts(data)
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
    return 0


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
    data = reports[0].data if len(reports) == 1 else merge(reports)
    sites = baseline_sites(data)
    write_atomically(out, Baseline.dumps(sites))
    print(f"loopguard: baseline written to {out} ({len(sites)} call site{'s' * (len(sites) != 1)})")
    return 0


def _html(args: argparse.Namespace) -> int:
    from ._html import render

    out = _check_output(args)
    data = _load(args.reports)
    write_atomically(out, render(data))
    print(f"loopguard: HTML report written to {out}")
    return 0


_COMMANDS = {"merge": _merge, "summary": _summary, "baseline": _baseline, "html": _html}
