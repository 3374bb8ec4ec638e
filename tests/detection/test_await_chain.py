"""Greenlet bridges: a block in code that SQLAlchemy's asyncio extension runs in a greenlet
(``run_sync``, hydrating ORM rows, an event listener) is reported with the running task's await
chain (the coroutines that awaited the bridge, each at its line), marked as such in the text and
the JSON report, and named at the project's line.

Real SQLAlchemy 2 asyncio over aiosqlite, in real pytest sessions.
"""

import html
import json

import pytest

pytest.importorskip("sqlalchemy.ext.asyncio")
pytest.importorskip("aiosqlite")
pytest.importorskip("greenlet")

pytestmark = pytest.mark.linux_full

HEADER = """
import asyncio, threading, time
import pytest, pytest_asyncio
from sqlalchemy import Integer, String, event, select
from sqlalchemy.ext.asyncio import create_async_engine, async_sessionmaker
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.util import greenlet_spawn


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "item"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(30))


@pytest_asyncio.fixture
async def engine(tmp_path):
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}")
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    yield engine
    await engine.dispose()
"""

INNER = dict(header=HEADER, args=("--loopguard-threshold=100ms",))

CHAIN_MARK = "*[[]await chain of task*: the coroutines that awaited the frames below[]]"
LIVE_MARK = "*[[]awaited by the chain above: the loop thread's own frames*"


def chain_lines(inner, *marked):
    """fnmatch patterns: the await chain's marker, then each ``(marker, function)`` of the
    test file as a traceback line of the chain, in order, then the live stack's marker."""
    return [
        CHAIN_MARK,
        *(f'*File "test_it.py", line {inner.line(m)}, in *{f}' for m, f in marked),
        LIVE_MARK,
    ]


def report_of(inner):
    return json.loads((inner.pytester.path / "lg.json").read_text())


def failed_of(inner):
    """The report's failed blocks (a loaded machine may add recorded ones: an import's garbage
    collection, a wait for a CPU)."""
    return [e for e in report_of(inner)["events"] if e["outcome"] == "failed"]


def test_run_sync_with_a_blocking_function(inner):
    result = inner.run(
        """
def reindex(conn):
    time.sleep(0.4)  # blocks in the greenlet


async def reindex_all(engine):
    async with engine.connect() as conn:
        await conn.run_sync(reindex)  # the bridge


@pytest.mark.asyncio
async def test_reindex(engine):
    await reindex_all(engine)  # the test awaits
""",
        "--loopguard-json=lg.json",
        "--loopguard-html=lg.html",
    )
    inner.assert_blocked_at(result, "blocks in the greenlet", "reindex")
    marked = (("the test awaits", "test_reindex"), ("the bridge", "reindex_all"))
    live = f'*File "test_it.py", line {inner.line("blocks in the greenlet")}, in reindex'
    result.stdout.fnmatch_lines([*chain_lines(inner, *marked), live])
    result.stdout.fnmatch_lines(["*greenlet_spawn*", LIVE_MARK])
    (ev,) = failed_of(inner)
    chain = [(f["file"], f["line"], f["function"]) for f in ev["await_chain"]]
    assert ("test_it.py", inner.line("the test awaits"), "test_reindex") in chain
    assert chain.index(("test_it.py", inner.line("the bridge"), "reindex_all")) == 1
    assert chain[-1][2] == "greenlet_spawn"
    assert [f["function"] for f in ev["stack"]] == ["reindex"]
    assert ev["site"]["line"] == inner.line("blocks in the greenlet")
    # The HTML page's block report shows the chain, marked, above the greenlet's frames.
    page = html.unescape((inner.pytester.path / "lg.html").read_text())
    marked = page.index("[await chain of task")
    awaited = page.index(f'File "test_it.py", line {inner.line("the test awaits")}')
    assert marked < awaited < page.index("[awaited by the chain above")


def test_hydrating_many_rows_is_named_at_the_awaiting_line(inner):
    # Rows enough for the ORM to take 0.5 s to hydrate them without a loop (measured first,
    # sync, as many times as it takes): the same rows through the asyncio extension take as
    # long on the loop thread, all of it in SQLAlchemy's frames, in a greenlet. The site is
    # the project's line that awaited it.
    result = inner.run(
        """
import gc

from sqlalchemy import create_engine, insert
from sqlalchemy.orm import Session


def rows_for(seconds, path):
    sync = create_engine(f"sqlite:///{path}")
    Base.metadata.create_all(sync)
    count = 0
    n = 20_000
    while True:
        with sync.begin() as conn:
            conn.execute(insert(Item), [{"name": f"item {i}"} for i in range(count, n)])
        count = n
        with Session(sync) as session:
            start = time.perf_counter()
            session.scalars(select(Item)).all()
            if time.perf_counter() - start >= seconds:
                break
        n *= 2
    sync.dispose()


@pytest.fixture
def many_rows(tmp_path):
    # Without the collector, whose share of a block is excused (--loopguard-gc).
    gc.disable()
    try:
        rows_for(0.5, tmp_path / "db.sqlite")
        yield
    finally:
        gc.enable()


async def load_items(engine):
    async with async_sessionmaker(engine)() as session:
        result = await session.execute(select(Item))  # hydrates every row
        return result.scalars().all()


@pytest.mark.asyncio
async def test_list_items(many_rows, engine):
    items = await load_items(engine)  # the test awaits
    assert items
""",
        "--loopguard-json=lg.json",
    )
    inner.assert_blocked_at(result, "hydrates every row", "load_items")
    marked = (("the test awaits", "test_list_items"), ("hydrates every row", "load_items"))
    result.stdout.fnmatch_lines([*chain_lines(inner, *marked), "*sqlalchemy*"])
    events = report_of(inner)["events"]
    site = ("test_it.py", inner.line("hydrates every row"))
    ev = next(e for e in events if (e["site"]["file"], e["site"]["line"]) == site)
    assert ev["await_chain"][0]["function"].endswith("test_list_items")
    assert all("sqlalchemy" in f["file"] or "site-packages" in f["file"] for f in ev["stack"])
    assert ev["operation"] is not None and ev["operation"]["file"] != "test_it.py"


def test_an_event_listener_that_blocks(inner):
    result = inner.run(
        """
@pytest.mark.asyncio
async def test_insert(engine):
    @event.listens_for(engine.sync_engine, "before_cursor_execute")
    def audit(conn, cursor, statement, parameters, context, executemany):
        time.sleep(0.4)  # the listener blocks

    async with async_sessionmaker(engine)() as session:
        session.add(Item(name="one"))
        await session.commit()  # the test awaits
""",
    )
    inner.assert_blocked_at(result, "the listener blocks", "*audit")
    result.stdout.fnmatch_lines(
        [CHAIN_MARK, f'*File "test_it.py", line {inner.line("the test awaits")}, in *test_insert']
    )


def test_a_stdlib_wait_through_a_greenlet_is_named_at_the_project_line(inner):
    # No project frame on the loop thread's stack (threading's wait, called by the greenlet):
    # the call site is the test's line that awaited the bridge, not threading.py.
    result = inner.run(
        """
@pytest.mark.asyncio
async def test_wait():
    done = threading.Event()
    await greenlet_spawn(done.wait, 0.4)  # waits through a greenlet
""",
    )
    inner.assert_blocked_at(result, "waits through a greenlet", "test_wait")
    result.stdout.fnmatch_lines(
        [
            "*blocked in *threading.py:* in *wait, called from *test_it.py:"
            f"{inner.line('waits through a greenlet')} in test_wait",
            CHAIN_MARK,
        ]
    )
    assert "at threading.py" not in result.stdout.str()


def test_a_stack_that_reaches_the_task_has_no_chain(inner):
    result = inner.run(
        """
async def helper():
    time.sleep(0.4)  # plain block


@pytest.mark.asyncio
async def test_plain():
    await helper()
""",
        "--loopguard-json=lg.json",
    )
    inner.assert_blocked_at(result, "plain block", "helper")
    assert "await chain" not in result.stdout.str()
    (ev,) = failed_of(inner)
    assert ev["await_chain"] == []
