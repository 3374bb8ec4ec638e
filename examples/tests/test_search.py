"""Searching documents."""

from __future__ import annotations

import asyncio

import loopguard
import pytest
from httpx import ASGITransport, AsyncClient

# sizes.slow_query: a plausible query (a file name with a question mark, such as
# "quarterly_reports_2024?") that sends QUERY_RE into exponential backtracking: half a second
# or more of regex matching, with the GIL held.

# ---- bug: a catastrophic regex on the loop; FAILS ----


@pytest.mark.asyncio
async def test_search_blocks_on_catastrophic_regex(client, sizes):
    resp = await client.get("/search", params={"q": sizes.slow_query})
    assert resp.status_code == 422


# ---- fixed: an unambiguous regex, linear on any input; PASSES ----


@pytest.mark.asyncio
async def test_search_v2_uses_a_linear_regex(client, sizes):
    resp = await client.get("/v2/search", params={"q": sizes.slow_query})
    assert resp.status_code == 422
    resp = await client.get("/v2/search", params={"q": "master services"})
    assert resp.status_code == 200


# ---- loopguard.guard(): assert on the block itself; PASSES ----


@pytest.mark.loopguard(enabled=False)  # the block is expected here: guard() checks it instead
def test_guard_names_the_regex_as_the_culprit(app, sizes):
    async def search() -> int:
        transport = ASGITransport(app=app)
        async with AsyncClient(transport=transport, base_url="http://docs.test") as client:
            resp = await client.get("/search", params={"q": sizes.slow_query})
            return resp.status_code

    with pytest.raises(loopguard.LoopBlockedError) as exc:
        with loopguard.guard(threshold="100ms"):
            assert asyncio.run(search()) == 422

    event = exc.value.events[0]
    assert event.site.function == "validate_query"
    assert event.site.filename.endswith("pipeline.py")
    assert event.duration >= 0.1
