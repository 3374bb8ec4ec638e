"""Fixtures for the docs-service tests.

Run the suite with loopguard:  pytest -p loopguard   (from this directory, or pass its path)
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio
from httpx import ASGITransport, AsyncClient

# Make the ``app`` package importable however pytest was started (from here, from the
# repository root, or with this directory's path as an argument).
sys.path.insert(0, str(Path(__file__).resolve().parent))

from app import images, pipeline
from app.main import create_app
from app.storage import Storage

PARAGRAPH = (
    "The Supplier shall deliver the Services described in Schedule 2 with reasonable skill "
    "and care, in accordance with good industry practice, and shall notify the Customer "
    "without undue delay of any event that may affect the delivery of the Services. "
) * 3

# ---- test data sized to the machine ----
#
# A bug of this app blocks the loop for as long as its work takes: a contract laid out, rows
# serialised, pages drawn. Data sized once for one machine would block a faster one for less
# than the threshold, and the bug would go unseen there. So the session measures, once, how
# much CPU a small sample of each workload takes on the machine that runs it (the thread's own
# CPU time: waiting for a CPU on a busy machine does not count), and sizes that workload's data
# so that the blocking call takes BLOCK_CPU seconds of CPU: five times loopguard's default
# threshold (100 ms), never less than the sizes the bugs were written with.
BLOCK_CPU = 0.5

# A plausible query (a file name with a question mark). QUERY_RE takes twice as long for each
# more character of its word before the "?": the session uses as many of these as it takes.
SLOW_QUERY_WORD = "quarterly_reports_2024_final_draft_v3"
SLOW_QUERY_MIN = len("quarterly_reports_2024")


@dataclass(frozen=True)
class Sizes:
    """The data of the buggy tests, sized so that each one blocks for ``BLOCK_CPU``."""

    paragraphs: int  # of the long contract: its layout is pure Python (bugs 5 and 8)
    events: int  # activity events in the session's database: the team query scans them all
    report_rows: int  # rows of the exported report: json.dumps (bug 3)
    seed_events: int  # events that the blocking fixture of test_users.py inserts (bug 6)
    slow_query: str  # a search query on which QUERY_RE backtracks (bug 4)
    thumbnails: int  # pages drawn and made into thumbnails with Pillow (bug 7)

    @property
    def pages(self) -> int:
        """The long contract's pages."""
        return pages(self.paragraphs)


def contract(paragraphs: int) -> str:
    """A contract of ``paragraphs`` numbered paragraphs (750 bytes each)."""
    return "\n\n".join(f"{i}. {PARAGRAPH}" for i in range(1, paragraphs + 1))


def pages(paragraphs: int) -> int:
    """The pages of ``contract(paragraphs)``: a paragraph lays out as 9 lines and a blank one,
    50 lines a page."""
    return math.ceil(paragraphs / 5)


def least_cpu(work: Callable[[], object], runs: int = 3) -> float:
    """The least CPU time of the calling thread that ``work()`` took, over ``runs`` runs."""
    best = math.inf
    for _ in range(runs):
        start = time.thread_time()
        work()
        best = min(best, time.thread_time() - start)
    return max(best, 1e-6)


def scaled(per_unit: float, floor: int, step: int = 1, fixed: float = 0.0) -> int:
    """The size of work that takes ``fixed + per_unit * size`` seconds of CPU, at which it
    takes ``BLOCK_CPU``: a multiple of ``step``, at least ``floor`` (and at most 20 times that,
    should a sample have been timed wrong)."""
    size = math.ceil((BLOCK_CPU - fixed) / max(per_unit, 1e-12))
    size = min(20 * floor, max(floor, size))
    return -(-size // step) * step


def measure_sizes(workdir: Path) -> Sizes:
    """Times a small sample of each workload on this machine (about a second in all)."""
    sample = contract(200)
    paragraphs = scaled(least_cpu(lambda: pipeline.layout_lines(sample)) / 200, 1500, step=5)

    # The regex: time a shorter word, then double for each character added.
    short = SLOW_QUERY_MIN - 4
    seconds = least_cpu(lambda: pipeline.validate_query(SLOW_QUERY_WORD[:short] + "?"))
    length = short + max(0, math.ceil(math.log2(BLOCK_CPU / seconds)))
    length = min(len(SLOW_QUERY_WORD), max(SLOW_QUERY_MIN, length))

    # Seeding: the users take a fixed time, each event some more (the slope between two sizes).
    small, probe = Storage(workdir / "small.db"), Storage(workdir / "probe.db")
    users = least_cpu(lambda: small.seed(events=20_000), runs=1)
    per_event = (least_cpu(lambda: probe.seed(events=80_000), runs=1) - users) / 60_000
    seed_events = scaled(per_event, 300_000, step=10_000, fixed=users - 20_000 * per_event)
    team = least_cpu(lambda: probe.team_members(7), runs=2)  # scans the 80,000 events
    rows = probe.activity_rows(10_000)
    report_rows = scaled(least_cpu(lambda: pipeline.export_json(rows)) / 10_000, 40_000, 1_000)

    drawn = pipeline.render_pages(sample)[:2]
    pillow = least_cpu(lambda: images.thumbnails(drawn, limit=2), runs=2)
    return Sizes(
        paragraphs=paragraphs,
        events=max(scaled(team / 80_000, 100_000, step=10_000), report_rows),
        report_rows=report_rows,
        seed_events=seed_events,
        slow_query=SLOW_QUERY_WORD[:length] + "?",
        thumbnails=scaled(pillow / 2, 3),
    )


@pytest.fixture(scope="session")
def sizes(tmp_path_factory: pytest.TempPathFactory) -> Sizes:
    return measure_sizes(tmp_path_factory.mktemp("sizing"))


@pytest.fixture(scope="session")
def storage(tmp_path_factory: pytest.TempPathFactory, sizes: Sizes) -> Storage:
    """A database with 20,000 users and their activity events (100,000 or more), shared by
    the whole session.

    A plain (sync) fixture: it runs before any event loop does, so seeding blocks nothing.
    """
    storage = Storage(tmp_path_factory.mktemp("db") / "docs.db")
    storage.seed(events=sizes.events)
    return storage


@pytest.fixture
def app(storage: Storage):
    return create_app(storage)


@pytest_asyncio.fixture
async def client(app):
    transport = ASGITransport(app=app)
    async with AsyncClient(transport=transport, base_url="http://docs.test") as client:
        yield client


def plugin_fixture(request: pytest.FixtureRequest, what: str):
    """loopguard's fixture for this test; the test is skipped (it checks ``what``) when the
    suite runs without ``-p loopguard``."""
    if not request.config.pluginmanager.has_plugin("loopguard"):
        pytest.skip(f"{what} needs loopguard: run with -p loopguard")
    return request.getfixturevalue("loopguard")


@pytest.fixture
def offload_check(request: pytest.FixtureRequest):
    """``loopguard.offload_check`` of this test."""
    return plugin_fixture(request, "offload_check()").offload_check


@pytest.fixture
def loop_watch(request: pytest.FixtureRequest):
    """loopguard's fixture of this test, for its loop's lag (``loop_watch.lag``)."""
    return plugin_fixture(request, "the loop's lag")


@pytest.fixture(scope="session")
def contract_text() -> str:
    """A contract of 1,500 paragraphs (about 1 MB of text, 300 pages)."""
    return contract(1500)


@pytest.fixture
def contract_id(storage: Storage, contract_text: str) -> int:
    return storage.add_document("master-services-agreement.txt", contract_text)


@pytest.fixture
def long_contract_id(storage: Storage, sizes: Sizes) -> int:
    """The contract that the layout bugs lay out: as long as takes ``BLOCK_CPU`` here (1,500
    paragraphs or more; ``sizes.pages`` pages).

    The fixed endpoints get ``contract_id``: they cut the layout into slices of a few ms
    whatever the length, and a longer text would only lengthen the stretches in which a busy
    machine keeps a thread that holds the GIL off the CPU (fetching the document's row, for
    instance), which ``offload_check()`` would count against the fix.
    """
    return storage.add_document("master-services-agreement-2.txt", contract(sizes.paragraphs))
