"""Document processing: layout, page thumbnails (Pillow), JSON checkpoints, sqlite3.

Two questions per stage: does it block the loop (loopguard fails the test at the line), and
when it runs in a thread, does it really leave the loop's CPU (``offload_check()``: the thread's
share of the GIL)?
"""

from __future__ import annotations

import json

import pytest

# ---- bugs: these tests FAIL under loopguard ----


@pytest.mark.asyncio
async def test_thumbnails_block_on_pillow(client, contract_id, sizes):
    resp = await client.post(
        f"/documents/{contract_id}/thumbnails", params={"pages": sizes.thumbnails}
    )
    assert resp.json() == {"id": contract_id, "thumbnails": sizes.thumbnails}


@pytest.mark.asyncio
async def test_layout_in_a_thread_still_holds_the_gil(
    client, long_contract_id, sizes, offload_check
):
    async with offload_check() as check:
        resp = await client.post(f"/documents/{long_contract_id}/layout")
    assert resp.json()["pages"] == sizes.pages
    check.assert_offloaded()  # fails: the worker held the GIL ~100% of its time


# ---- fixed: Pillow, the checkpoint and the insert run in threads that let go of the GIL ----


@pytest.mark.asyncio
async def test_thumbnails_v2_are_offloaded(client, app, contract_id, sizes, offload_check):
    async with offload_check() as check:
        resp = await client.post(
            f"/v2/documents/{contract_id}/thumbnails", params={"pages": sizes.thumbnails}
        )
    assert resp.json() == {"id": contract_id, "thumbnails": sizes.thumbnails}
    check.assert_offloaded()
    workers = [t for t in check.threads if t.role == "worker" and t.busy > 0.05]
    assert workers, check.report()  # Pillow's work was seen, in a thread
    folder = app.state.workdir / str(contract_id)
    assert json.loads((folder / "layout.json").read_text())["pages"] == 300
    assert len(json.loads((folder / "thumbnails.json").read_text())["sizes"]) == sizes.thumbnails


@pytest.mark.asyncio
async def test_layout_v2_in_slices_stays_on_the_loop(client, contract_id, offload_check):
    async with offload_check() as check:
        resp = await client.post(f"/v2/documents/{contract_id}/render")
    assert resp.json()["pages"] == 300
    check.assert_offloaded()
