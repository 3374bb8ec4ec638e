"""The same app through Starlette's TestClient (sync tests, the loop runs in a thread)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient


@pytest.fixture
def sync_client(app):
    with TestClient(app) as client:
        yield client


def test_health_with_testclient(sync_client):
    assert sync_client.get("/health").json() == {"status": "ok"}


# ---- bug: the regex again; TestClient's loop runs in a worker thread, loopguard sees it ----


def test_search_blocks_under_testclient(sync_client, sizes):
    resp = sync_client.get("/search", params={"q": sizes.slow_query})
    assert resp.status_code == 422
