"""Uploading and rendering documents."""

from __future__ import annotations

import pytest

# ---- bugs: these tests FAIL under loopguard (the endpoints work, but block the loop) ----


@pytest.mark.asyncio
async def test_upload_blocks_on_sync_sleep(client):
    resp = await client.post("/documents", json={"name": "notes.txt", "body": "hello"})
    assert resp.status_code == 201


@pytest.mark.asyncio
async def test_render_blocks_on_cpu_loop(client, long_contract_id, sizes):
    resp = await client.post(f"/documents/{long_contract_id}/render")
    assert resp.status_code == 200
    assert resp.json()["pages"] == sizes.pages


# ---- fixed: the scan waits in a thread, the layout runs in slices; these PASS ----


@pytest.mark.asyncio
async def test_upload_v2_scans_in_a_thread(client):
    resp = await client.post("/v2/documents", json={"name": "notes.txt", "body": "hello"})
    assert resp.status_code == 201


@pytest.mark.asyncio
async def test_render_v2_renders_in_slices(client, contract_id):
    resp = await client.post(f"/v2/documents/{contract_id}/render")
    assert resp.status_code == 200
    assert resp.json()["pages"] == 300
