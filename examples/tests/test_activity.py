"""Activity by kind, through the ORM (SQLAlchemy's asyncio extension over aiosqlite)."""

from __future__ import annotations

import pytest

COUNTS = {"login": 33_333, "upload": 33_334, "export": 33_333}

# ---- bug: the ORM hydrates 100,000 rows on the loop thread, in a greenlet; FAILS ----


@pytest.mark.asyncio
async def test_activity_by_kind_hydrates_every_row_on_the_loop(client):
    resp = await client.get("/reports/activity-by-kind")
    assert resp.json() == COUNTS


# ---- fixed: the database counts, three rows come back; PASSES ----


@pytest.mark.asyncio
async def test_activity_by_kind_v2_counts_in_sql(client):
    resp = await client.get("/v2/reports/activity-by-kind")
    assert resp.json() == COUNTS
