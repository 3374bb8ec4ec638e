"""Activity by kind, through the ORM (SQLAlchemy's asyncio extension over aiosqlite)."""

from __future__ import annotations

import pytest
from app.orm import ACTIVITY_SAMPLE


def counted(report: dict[str, int]) -> bool:
    """The report counts the latest events of each kind (the database holds more)."""
    return set(report) == {"login", "upload", "export"} and sum(report.values()) == ACTIVITY_SAMPLE


# ---- bug: the ORM hydrates 100,000 rows on the loop thread, in a greenlet; FAILS ----


@pytest.mark.asyncio
async def test_activity_by_kind_hydrates_every_row_on_the_loop(client):
    resp = await client.get("/reports/activity-by-kind")
    assert counted(resp.json())


# ---- fixed: the database counts, three rows come back; PASSES ----


@pytest.mark.asyncio
async def test_activity_by_kind_v2_counts_in_sql(client):
    resp = await client.get("/v2/reports/activity-by-kind")
    assert counted(resp.json())
