"""The service's ORM layer: SQLAlchemy 2's asyncio extension over aiosqlite, on the service's
database.

Queries here ``await`` the driver, so they look non-blocking. But SQLAlchemy runs the ORM's own
work (compiling the query, turning each row into an object, event listeners) as synchronous code
in a greenlet on the event loop's thread: while it hydrates 100,000 rows into objects, the
loop runs nothing else. Ask the database for the answer instead of the rows.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy import String, func, select
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Event(Base):
    """A row of the ``events`` table (see ``storage.SCHEMA``)."""

    __tablename__ = "events"
    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int]
    kind: Mapped[str] = mapped_column(String)
    at: Mapped[str] = mapped_column(String)


@asynccontextmanager
async def session(path: str) -> AsyncIterator[AsyncSession]:
    """A session on the database at ``path`` (its engine is disposed of afterwards)."""
    engine = create_async_engine(f"sqlite+aiosqlite:///{path}")
    try:
        async with AsyncSession(engine) as s:
            yield s
    finally:
        await engine.dispose()


ACTIVITY_SAMPLE = 100_000
"""How many of the latest events the activity report counts."""


async def activity_by_kind(s: AsyncSession, limit: int = ACTIVITY_SAMPLE) -> dict[str, int]:
    # BUG: loads the events as ORM objects to count them in Python; the driver's wait is
    # awaited, but building 100,000 objects runs on the loop thread.
    events = (await s.scalars(select(Event).order_by(Event.id.desc()).limit(limit))).all()
    return dict(Counter(e.kind for e in events))


async def activity_by_kind_v2(s: AsyncSession, limit: int = ACTIVITY_SAMPLE) -> dict[str, int]:
    # Fixed: the database counts; three rows come back.
    latest = select(Event.kind).order_by(Event.id.desc()).limit(limit).subquery()
    rows = await s.execute(select(latest.c.kind, func.count()).group_by(latest.c.kind))
    return {kind: count for kind, count in rows}
