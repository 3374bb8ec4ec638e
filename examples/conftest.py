"""Fixtures for the docs-service tests.

Run the suite with loopguard:  pytest -p loopguard   (from this directory, or pass its path)
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import pytest_asyncio
from httpx import ASGITransport, AsyncClient

# Make the ``app`` package importable however pytest was started (from here, from the
# repository root, or with this directory's path as an argument).
sys.path.insert(0, str(Path(__file__).resolve().parent))

from app.main import create_app
from app.storage import Storage

PARAGRAPH = (
    "The Supplier shall deliver the Services described in Schedule 2 with reasonable skill "
    "and care, in accordance with good industry practice, and shall notify the Customer "
    "without undue delay of any event that may affect the delivery of the Services. "
) * 3


@pytest.fixture(scope="session")
def storage(tmp_path_factory: pytest.TempPathFactory) -> Storage:
    """A database with 20,000 users and 100,000 events, shared by the whole session.

    A plain (sync) fixture: it runs before any event loop does, so seeding blocks nothing.
    """
    storage = Storage(tmp_path_factory.mktemp("db") / "docs.db")
    storage.seed()
    return storage


@pytest.fixture
def app(storage: Storage):
    return create_app(storage)


@pytest_asyncio.fixture
async def client(app):
    transport = ASGITransport(app=app)
    async with AsyncClient(transport=transport, base_url="http://docs.test") as client:
        yield client


@pytest.fixture
def offload_check(request: pytest.FixtureRequest):
    """``loopguard.offload_check`` of this test (the tests that use it need ``-p loopguard``)."""
    if not request.config.pluginmanager.has_plugin("loopguard"):
        pytest.skip("offload_check() needs loopguard: run with -p loopguard")
    return request.getfixturevalue("loopguard").offload_check


@pytest.fixture(scope="session")
def contract_text() -> str:
    """A long contract: 1,500 paragraphs, about 1 MB of text."""
    return "\n\n".join(f"{i}. {PARAGRAPH}" for i in range(1, 1501))


@pytest.fixture
def contract_id(storage: Storage, contract_text: str) -> int:
    return storage.add_document("master-services-agreement.txt", contract_text)
