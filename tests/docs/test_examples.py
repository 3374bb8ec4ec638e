"""End to end: the example FastAPI service's test suite, run under ``pytest -p loopguard``.

Every test there that demonstrates a bug must fail, naming its blocking line; every test of
correct code must pass; and the output the READMEs quote is what the tool prints.
"""

from __future__ import annotations

import re
import shutil
from fnmatch import fnmatch
from pathlib import Path

import pytest

pytestmark = pytest.mark.single_version

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
pytest.importorskip("pytest_asyncio")
pytest.importorskip("anyio")

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
README = EXAMPLES.parent / "README.md"

# What changes from run to run (or machine to machine) in loopguard's output, and how the
# comparison of the READMEs' samples with a real run sees it. What must hold is kept: the kind
# of block, the threshold, each project frame's file, line and function, the library a block
# was in, the outcome.
_VARIABLE = [
    (re.compile(r"(?<!threshold )\b\d+(\.\d+)? (ms|s)\b"), "<time>"),
    (re.compile(r"^(CRITICAL|HIGH|MEDIUM|MONITOR)\b"), "<severity>"),
    (re.compile(r"\b(Task|Thread)-\d+"), r"\1-<n>"),
    # Which worker thread of the pool ran the offloaded work, and its exact share of the GIL.
    (re.compile(r"'asyncio_\d+'"), "'asyncio_<n>'"),
    (re.compile(r"the GIL \d+% of"), "the GIL <n>% of"),
    # Whether the block is the test's only one (a busy machine may keep the loop waiting for a
    # worker's GIL in the same test, which adds a verdict of its own).
    (re.compile(r"^loopguard: block \d+ of \d+: "), "loopguard: "),
    # Whether the OffloadError's message starts with that verdict or with another one (a busy
    # machine may also have kept the loop waiting for the worker's GIL).
    (re.compile(r"^E( +)loopguard\.OffloadError: loopguard: "), r"E\1loopguard: "),
    (re.compile(r"\.\.\. \d+ (outer frames|frames in)"), r"... <n> \1"),
    # Where Python and the libraries are installed, and which versions.
    (re.compile(r'File "\S*/site-packages/([^"]+)", line \d+'), r'File "<lib>/\1", line <n>'),
    # Which statement of a library the block was sampled in ("blocked in" a frame of Pillow's
    # ImageFilter or Image module, of json's encoder): the call site, which follows, must match.
    (
        re.compile(r"^( {4}blocked in )(\S+\.py:\d+ in \S+)(, called from )"),
        lambda m: m[1] + library(m[2]) + m[3],
    ),
    # Whether sqlite was sampled in C code or in a system call.
    (
        re.compile(
            r"GIL released, (running C code that released it"
            r"|in the system call \w+(?: (?:on|for) [^,]+| \(sleeping\))?"
            r"|waiting on a lock(?: or condition)? \(futex\))"
        ),
        "GIL released, <in C code>",
    ),
    # Which line of the layout loop was running (and the table's column widths).
    (re.compile(r"(pipeline\.py:)\d+( in layout_lines)( .*)?$"), r"\1<line>\2"),
    (re.compile(r" {2,}"), "  "),
    # The same, in a hotspot row's last column, the blocking operation.
    (
        re.compile(r"^(<severity>  .* in \S+  )(\S+\.py:\d+ in \S+)$"),
        lambda m: m[1] + library(m[2]),
    ),
    # The totals under the hotspot table: a loaded machine may add a block that waited for a
    # CPU (recorded, not failed) in a test that passes.
    (
        re.compile(r"^\d+ blocks? at \d+ call sites? in \d+ tests?, (<time>) blocked in total: .*"),
        r"<n> blocks at <n> call sites in <n> tests, \1 blocked in total: <outcomes>",
    ),
    # Rules across the terminal's width.
    (re.compile(r"^(=+|_+) (.*) (=+|_+)$"), r"-- \2 --"),
]


def library(frame: str) -> str:
    """A frame of library code (``/usr/lib/python3.11/json/encoder.py:326 in f``,
    ``.../PIL/ImageFilter.py:202 in GaussianBlur.filter``, ``PIL/Image.py:2440 in
    Image.resize``) as the library it is in: ``<json code>``, ``<PIL code>``."""
    path = frame.split(":", 1)[0]
    for prefix in (r".*/site-packages/", r".*/lib/python[\d.]+t?/", r"\.\.\./"):
        path = re.sub(f"^{prefix}", "", path)
    return f"<{path.split('/')[0].removesuffix('.py')} code>"


def normalize(lines: list[str]) -> list[str]:
    out = []
    for text in lines:
        text = text.rstrip()
        # How long the loop thread waited for a CPU depends on the machine's load.
        if text.startswith("    (") and "waiting for a CPU, not running this code" in text:
            continue
        text = text.replace("(waiting for a CPU) ", "")
        if text.startswith("  >") and out and out[-1].endswith(" in layout_lines"):
            text = "  >     <source>"
        for pattern, replacement in _VARIABLE:
            text = pattern.sub(replacement, text)
        out.append(text)
    return out


def samples(markdown: Path) -> list[list[str]]:
    """The output quoted in ``markdown``'s ```text blocks, in chunks: a line ``...`` stands
    for output left out, and a line starting with ``$`` is the command."""
    chunks: list[list[str]] = []
    for block in re.findall(r"^```text\n(.*?)^```", markdown.read_text(), re.M | re.S):
        chunk: list[str] = []
        for text in block.splitlines():
            if text.startswith("$ ") or text == "...":
                if chunk:
                    chunks.append(chunk)
                chunk = []
            else:
                chunk.append(text)
        if chunk:
            chunks.append(chunk)
    return chunks


def assert_samples_match(markdown: Path, output: list[str]) -> None:
    """Each sample of ``markdown`` is a run of lines of ``output`` (hotspot rows in any order:
    their order depends on the durations)."""
    real = normalize(output)
    for chunk in samples(markdown):
        want = normalize(chunk)
        if any(x.startswith("severity  count") for x in want):
            missing = [x for x in want if x not in real]
            assert not missing, f"{markdown.name}: hotspot table lines not printed: {missing}"
            continue
        starts = [i for i, x in enumerate(real) if x == want[0]]
        if not any(real[i : i + len(want)] == want for i in starts):
            best = max(
                starts or [0],
                key=lambda i: sum(
                    a == b for a, b in zip(real[i : i + len(want)], want, strict=False)
                ),
            )
            pytest.fail(
                f"{markdown.name}: a sample does not match the output\n--- sample:\n"
                + "\n".join(want)
                + "\n--- output:\n"
                + "\n".join(real[best : best + len(want)])
            )


def line_of(relpath: str, text: str) -> int:
    """The number of the one line of ``examples/<relpath>`` that contains ``text``."""
    lines = (EXAMPLES / relpath).read_text().splitlines()
    found = [n for n, line in enumerate(lines, 1) if text in line]
    assert len(found) == 1, f"{text!r} is on lines {found} of {relpath}"
    return found[0]


def section(lines: list[str], header: str) -> pytest.LineMatcher:
    """The lines of one test's report: from its ``___ name ___`` header to the next one."""
    matcher = pytest.LineMatcher(lines)
    matcher.fnmatch_lines([header])
    start = next(i for i, line in enumerate(lines) if fnmatch(line, header)) + 1
    end = next(
        (i for i in range(start, len(lines)) if lines[i].startswith(("___", "==="))), len(lines)
    )
    return pytest.LineMatcher(lines[start:end])


def assert_failing_row(lines: list[str], site: str) -> None:
    """loopguard's end-of-session table of call sites has a row for ``site`` that failed: its
    outcome is "failed", or, when a loaded machine made another test block there only for
    waiting for a CPU (recorded, not failed), "N failed, M recorded"."""
    patterns = (f"*  failed  *{site} *", f"*  * failed, * recorded  *{site} *")
    if not any(fnmatch(line, p) for line in lines for p in patterns):
        table = [line for line in lines if "failed" in line or "recorded" in line]
        pytest.fail(f"no failing row for {site} in:\n" + "\n".join(table))


@pytest.mark.linux_full  # its offload_check() tests need the GIL reader
@pytest.mark.slow
def test_example_suite_fails_exactly_the_buggy_tests(pytester, monkeypatch):
    for var in ("LOOPGUARD_THRESHOLD", "LOOPGUARD_SAMPLER"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("CI", "true")  # short summary lines whole, as the READMEs quote them
    shutil.copytree(
        EXAMPLES,
        pytester.path / "examples",
        ignore=shutil.ignore_patterns("__pycache__", ".pytest_cache"),
    )
    result = pytester.runpytest_subprocess("-p", "loopguard", "-p", "no:cacheprovider", "examples")

    # 8 bugs in endpoints fail (7 blocks, 1 offload that holds the GIL), the blocking fixture
    # errors at setup, the rest passes.
    result.assert_outcomes(failed=9, errors=1, passed=16)

    sleep = line_of("app/scanner.py", "time.sleep(SCAN_LATENCY)")
    query = line_of("app/storage.py", "db.execute(TEAM_MEMBERS")
    dumps = line_of("app/pipeline.py", "json.dumps(")
    response = line_of("app/main.py", "return Response(pipeline.export_json(rows)")
    regex = line_of("app/pipeline.py", "return QUERY_RE.match(query)")
    fixture = line_of("tests/test_users.py", "storage.seed(events=sizes.seed_events)  # BUG")
    blur = line_of("app/images.py", "small = page.filter(")
    hydrate = line_of("app/orm.py", "events = (await s.scalars(select(Event).order_by(")
    expected = {
        # test: (site, source line shown under it)
        "test_documents.py::test_upload_blocks_on_sync_sleep": (
            f"app/scanner.py:{sleep} in *scan",
            "time.sleep(SCAN_LATENCY)*",
        ),
        "test_documents.py::test_render_blocks_on_cpu_loop": (
            # Any line of the layout loop may be the one sampled.
            "app/pipeline.py:* in *layout_lines",
            "*",
        ),
        "test_processing.py::test_thumbnails_block_on_pillow": (
            f"app/images.py:{blur} in thumbnail",
            "small = page.filter(ImageFilter.GaussianBlur(3)).resize(*)",
        ),
        "test_users.py::test_team_lookup_blocks_on_sync_sqlite": (
            f"app/storage.py:{query} in *team_members",
            "return [[]dict(row) for row in db.execute(TEAM_MEMBERS, (team_id,))[]]",
        ),
        "test_reports.py::test_report_export_blocks_on_json_dumps": [
            (
                f"app/pipeline.py:{dumps} in *export_json",
                'return json.dumps({"count": len(rows), "rows": rows}, indent=2, sort_keys=True)',
            ),
            # The endpoint's line when a busy machine let the watchdog look only late in the
            # block, after json.dumps, while the response encoded its 10 MB.
            (
                f"app/main.py:{response} in *activity_report",
                'return Response(pipeline.export_json(rows), media_type="application/json")',
            ),
        ],
        # The ORM hydrates the rows in a greenlet: no project frame on the loop thread's own
        # stack; the site is the line of the await chain that awaited the bridge, or the next
        # one, which counts the objects in the same block (no await between them).
        "test_activity.py::test_activity_by_kind_hydrates_every_row_on_the_loop": [
            (
                f"app/orm.py:{hydrate} in *activity_by_kind",
                "events = (await s.scalars(select(Event).order_by(Event.id.desc()).limit(limit)))*",
            ),
            (
                f"app/orm.py:{hydrate + 1} in *activity_by_kind",
                "return dict(Counter(e.kind for e in events))",
            ),
        ],
        "test_search.py::test_search_blocks_on_catastrophic_regex": (
            f"app/pipeline.py:{regex} in *validate_query",
            "return QUERY_RE.match(query) is not None",
        ),
        "test_sync_client.py::test_search_blocks_under_testclient": (
            f"app/pipeline.py:{regex} in *validate_query",
            "return QUERY_RE.match(query) is not None",
        ),
    }
    for test, sites in expected.items():
        name = test.split("::")[1]
        report = section(result.outlines, f"_* {name} _*")
        alternatives = sites if isinstance(sites, list) else [sites]
        for i, (site, source) in enumerate(alternatives, 1):
            try:
                report.fnmatch_lines(
                    [
                        "loopguard: *event loop blocked for * (threshold 100 ms)",
                        "",
                        f"    *{site}",
                        f"  >     {source}",
                    ]
                )
                break
            except pytest.fail.Exception:
                if i == len(alternatives):
                    raise
        assert_failing_row(result.outlines, site)
        result.stdout.fnmatch_lines([f"FAILED *tests/{test}*"])

    # The async fixture blocks during setup: an error, pointing at the fixture's line.
    report = section(result.outlines, "_* ERROR at setup of test_fresh_database_fixture_blocks_*")
    report.fnmatch_lines(
        [
            "loopguard: *event loop blocked for * (threshold 100 ms)",
            "",
            "    *app/storage.py:* in *seed",
            "  Python stack of the loop thread (most recent call last):",
            f'    File "*tests/test_users.py", line {fixture}, in fresh_client',
        ]
    )
    assert_failing_row(result.outlines, "app/storage.py:* in *seed")

    # Layout "offloaded" to a thread: not a block, but the worker held the GIL. (On a busy
    # machine the error may first report the loop starved of the GIL by that worker.)
    report = section(result.outlines, "_* test_layout_in_a_thread_still_holds_the_gil _*")
    report.fnmatch_lines(
        [
            "E       *loopguard: offloaded work held the GIL inside "
            "offload_check() (max_gil_share 50%)",
            "E           worker 'asyncio_*' held the GIL *% of its * at *app/pipeline.py:* in "
            "layout_lines",
        ]
    )

    # The ORM's block is shown with the task's await chain: the test, then the endpoint.
    report = section(result.outlines, "_* test_activity_by_kind_hydrates_every_row_on_the_loop _*")
    report.fnmatch_lines(
        [
            "    [[]await chain of task *: the coroutines that awaited the frames below[]]",
            '    File "*tests/test_activity.py", line *, in test_activity_by_kind_*',
            '    File "*app/main.py", line *, in create_app.<locals>.activity_by_kind',
            '    File "*app/orm.py", line *, in activity_by_kind',
            "    [[]awaited by the chain above: the loop thread's own frames*",
        ]
    )

    # The loop of TestClient runs in a worker thread; loopguard watches it all the same.
    result.stdout.fnmatch_lines(["  loop thread 'Thread-*'*"])

    # Correct code passes: offloaded work, short awaits, an allowed slow step, guard().
    for test in (
        "test_documents.py::test_upload_v2_scans_in_a_thread",
        "test_documents.py::test_render_v2_renders_in_slices",
        "test_users.py::test_team_lookup_v2_runs_in_the_threadpool",
        "test_users.py::test_fresh_database_fixture_seeds_in_a_thread",
        "test_reports.py::test_report_export_v2_streams_page_by_page",
        "test_reports.py::test_csv_export_is_allowed_one_second",
        "test_search.py::test_search_v2_uses_a_linear_regex",
        "test_search.py::test_guard_names_the_regex_as_the_culprit",
        "test_health.py::test_many_short_awaits_do_not_add_up",
        "test_processing.py::test_thumbnails_v2_are_offloaded",
        "test_processing.py::test_layout_v2_in_slices_stays_on_the_loop",
        "test_load.py::test_v2_holds_the_slo_while_documents_process",
        "test_activity.py::test_activity_by_kind_v2_counts_in_sql",
    ):
        result.stdout.no_fnmatch_line(f"*{test}*")
    assert result.ret == pytest.ExitCode.TESTS_FAILED

    # What the READMEs show is what the tool prints (durations, task numbers and the sampled
    # line of a loop aside).
    assert_samples_match(EXAMPLES / "README.md", result.outlines)
    assert_samples_match(README, result.outlines)


def test_samples_are_compared_on_what_must_hold():
    """Runs that read a block's stack in different statements of one library, or that lasted
    longer, match the same sample; another project line, library, outcome, threshold or kind
    of block does not."""

    def same(sample: str, printed: str) -> bool:
        return normalize([sample]) == normalize([printed])

    blocked = "    blocked in {}, called from examples/app/images.py:{} in thumbnail"
    sample = blocked.format(".../PIL/ImageFilter.py:202 in GaussianBlur.filter", 33)
    resize = "/v/lib/python3.12/site-packages/PIL/Image.py:2440 in Image.resize"
    assert same(sample, blocked.format(resize, 33))
    assert not same(sample, blocked.format(resize, 34))
    assert not same(
        sample, blocked.format("/v/site-packages/numpy/_core/fromnumeric.py:9 in f", 33)
    )
    dumps = "    blocked in {}, called from examples/app/pipeline.py:93 in export_json"
    assert same(
        dumps.format("/usr/lib/python3.11/json/encoder.py:326 in _make_iterencode.<locals>.f"),
        dumps.format("/opt/py/lib/python3.13/json/encoder.py:412 in _make_iterencode.<locals>.g"),
    )

    row = "{}        1      1     {}     {}  {}   examples/app/images.py:{} in thumbnail     {}"
    sample = row.format("MEDIUM", "364 ms", "364 ms", "failed", 33, "PIL/ImageFilter.py:202 in f")
    assert same(
        sample,
        row.format(
            "HIGH", "1.2 s", "1.2 s", "failed", 33, "(waiting for a CPU) PIL/Image.py:1 in g"
        ),
    )
    assert not same(
        sample, row.format("HIGH", "1.2 s", "1.2 s", "failed", 34, "PIL/Image.py:1 in g")
    )
    assert not same(
        sample, row.format("MEDIUM", "1 s", "1 s", "recorded", 33, "PIL/Image.py:1 in g")
    )

    error = "E       loopguard.OffloadError: loopguard: {}"
    held = "offloaded work held the GIL inside offload_check() (max_gil_share 50%)"
    assert same(error.format(held), "E       loopguard: " + held)
    assert not same(error.format(held), error.format("event loop starved of the GIL for 1 s"))

    head = "loopguard: event loop blocked for 364 ms (threshold 100 ms)"
    assert same(head, "loopguard: event loop blocked for 1.56 s (threshold 100 ms)")
    assert same(head, "loopguard: block 2 of 2: event loop blocked for 1 s (threshold 100 ms)")
    assert not same(head, "loopguard: event loop blocked for 364 ms (threshold 1 s)")
    assert not same(head, "loopguard: event loop starved of the GIL for 364 ms (threshold 100 ms)")
