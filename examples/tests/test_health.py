"""Health checks and many short awaits: nothing here blocks; these PASS."""

from __future__ import annotations

import asyncio

import pytest
from httpx import ASGITransport, AsyncClient


@pytest.mark.asyncio
async def test_health(client):
    resp = await client.get("/health")
    assert resp.json() == {"status": "ok"}


@pytest.mark.asyncio
async def test_many_short_awaits_do_not_add_up(client):
    # 200 requests and 250 ms of sleeps in all: the loop is busy, but never blocked for long.
    # (Eight pollers at a time: one loop iteration runs every callback that is ready, so
    # hundreds of concurrent requests would add up to one long stretch away from the selector.)
    async def poll() -> None:
        for _ in range(25):
            resp = await client.get("/health")
            assert resp.status_code == 200
            await asyncio.sleep(0.01)

    await asyncio.gather(*(poll() for _ in range(8)))


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_user_lookup_under_anyio(app):
    transport = ASGITransport(app=app)
    async with AsyncClient(transport=transport, base_url="http://docs.test") as client:
        resp = await client.get("/users/42")
    assert resp.json()["email"] == "user42@example.com"
