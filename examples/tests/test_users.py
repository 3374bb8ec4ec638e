"""Looking up users and teams."""

from __future__ import annotations

import asyncio

import pytest
import pytest_asyncio
from app.main import create_app
from app.storage import Storage
from httpx import ASGITransport, AsyncClient

# ---- bug: a synchronous sqlite3 query in an async endpoint; FAILS ----


@pytest.mark.asyncio
async def test_team_lookup_blocks_on_sync_sqlite(client):
    resp = await client.get("/teams/7/members")
    assert resp.status_code == 200
    assert len(resp.json()) == 25


# ---- fixed: FastAPI runs a plain ``def`` endpoint in its threadpool; PASSES ----


@pytest.mark.asyncio
async def test_team_lookup_v2_runs_in_the_threadpool(client):
    resp = await client.get("/v2/teams/7/members")
    assert resp.status_code == 200
    assert len(resp.json()) == 25


# ---- bug in the test itself: an async fixture that blocks during setup; ERRORS ----


@pytest_asyncio.fixture
async def fresh_client(tmp_path, sizes):
    storage = Storage(tmp_path / "fresh.db")
    storage.seed(events=sizes.seed_events)  # BUG: synchronous bulk insert, on the loop, in setup
    transport = ASGITransport(app=create_app(storage))
    async with AsyncClient(transport=transport, base_url="http://docs.test") as client:
        yield client


@pytest.mark.asyncio
async def test_fresh_database_fixture_blocks_in_setup(fresh_client):
    resp = await fresh_client.get("/users/42")
    assert resp.json()["email"] == "user42@example.com"


# ---- fixed: the fixture seeds in a thread; PASSES ----


@pytest_asyncio.fixture
async def fresh_client_offloaded(tmp_path, sizes):
    storage = await asyncio.to_thread(Storage, tmp_path / "fresh.db")
    await asyncio.to_thread(storage.seed, events=sizes.seed_events)
    transport = ASGITransport(app=create_app(storage))
    async with AsyncClient(transport=transport, base_url="http://docs.test") as client:
        yield client


@pytest.mark.asyncio
async def test_fresh_database_fixture_seeds_in_a_thread(fresh_client_offloaded):
    resp = await fresh_client_offloaded.get("/users/42")
    assert resp.json()["email"] == "user42@example.com"
