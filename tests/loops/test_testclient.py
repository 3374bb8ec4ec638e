"""Starlette/FastAPI ``TestClient``: the app's loop runs in a portal thread."""

import pytest

pytestmark = pytest.mark.single_version

pytest.importorskip("starlette")
pytest.importorskip("httpx")


def test_blocking_endpoint_fails_naming_the_endpoint_line(inner):
    result = inner.run("""
import time
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

async def slow(request):
    time.sleep(0.3)  # blocking endpoint
    return JSONResponse({"ok": True})

async def fast(request):
    return JSONResponse({"ok": True})

app = Starlette(routes=[Route("/slow", slow), Route("/fast", fast)])

def test_slow():
    with TestClient(app) as client:
        assert client.get("/slow").json() == {"ok": True}

def test_fast():
    with TestClient(app) as client:
        assert client.get("/fast").json() == {"ok": True}
""")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*event loop blocked for*",
            inner.site("# blocking endpoint", "slow"),
            "*>*time.sleep(0.3)  # blocking endpoint",
            "FAILED test_it.py::test_slow*",
        ]
    )
