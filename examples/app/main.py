"""The service as shipped.

Every endpoint here works and returns the right answer; most unit tests would pass. Six
of them, though, run slow synchronous code directly on the event loop: while one of those
requests is in flight, the server answers nothing else, not even ``/health``. A seventh
offloads its work to a thread that still holds the GIL. They are marked ``BUG``;
``fixed.py`` has each one done right, under ``/v2``.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Optional

from fastapi import FastAPI, HTTPException, Request, Response

from . import fixed, images, pipeline, scanner
from .models import DocumentIn
from .storage import Storage


def create_app(storage: Storage, workdir: Optional[Path] = None) -> FastAPI:
    app = FastAPI(title="docs-service")
    app.state.storage = storage
    # Per-stage JSON checkpoints of document processing.
    app.state.workdir = workdir or Path(storage.path).parent / "checkpoints"
    app.state.jobs = {}  # document id -> fixed.Job, for the progress WebSocket
    app.state.tasks = set()  # background processing tasks

    def db(request: Request) -> Storage:
        return request.app.state.storage

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/documents", status_code=201)
    async def upload_document(doc: DocumentIn, request: Request) -> dict[str, int]:
        # BUG: scan() is a blocking HTTP call (time.sleep here): the loop stops until it answers.
        if not scanner.scan(doc.body.encode()):
            raise HTTPException(422, "the document did not pass the malware scan")
        doc_id = await asyncio.to_thread(db(request).add_document, doc.name, doc.body)
        return {"id": doc_id}

    @app.post("/documents/{doc_id}/render")
    async def render_document(doc_id: int, request: Request) -> dict[str, int]:
        doc = await asyncio.to_thread(db(request).document, doc_id)
        if doc is None:
            raise HTTPException(404, "no such document")
        # BUG: page layout is pure-Python CPU work, run on the loop thread.
        pages = pipeline.render_pages(doc["body"])
        return {"id": doc_id, "pages": len(pages)}

    @app.post("/documents/{doc_id}/layout")
    async def layout_document(doc_id: int, request: Request) -> dict[str, int]:
        doc = await asyncio.to_thread(db(request).document, doc_id)
        if doc is None:
            raise HTTPException(404, "no such document")
        # BUG: "offloaded" to a thread, but layout is pure Python: the worker holds the GIL
        # the whole time, and the loop thread has to wait for it between its callbacks.
        pages = await asyncio.to_thread(pipeline.render_pages, doc["body"])
        return {"id": doc_id, "pages": len(pages)}

    @app.post("/documents/{doc_id}/thumbnails")
    async def make_thumbnails(doc_id: int, request: Request, pages: int = 3) -> dict[str, int]:
        doc = await asyncio.to_thread(db(request).document, doc_id)
        if doc is None:
            raise HTTPException(404, "no such document")
        layout = await fixed.render_in_slices(doc["body"])
        # BUG: Pillow's filters run in C, but here they run on the loop thread.
        pngs = images.thumbnails(layout, limit=pages)
        count = await asyncio.to_thread(db(request).save_thumbnails, doc_id, pngs)
        return {"id": doc_id, "thumbnails": count}

    @app.get("/users/{user_id}")
    async def get_user(user_id: int, request: Request) -> dict:
        # Fine: a primary-key lookup, and it is offloaded anyway.
        user = await asyncio.to_thread(db(request).user, user_id)
        if user is None:
            raise HTTPException(404, "no such user")
        return user

    @app.get("/teams/{team_id}/members")
    async def team_members(team_id: int, request: Request) -> list[dict]:
        # BUG: a synchronous sqlite3 query (a slow one) inside an async endpoint.
        return db(request).team_members(team_id)

    @app.get("/reports/activity.json")
    async def activity_report(request: Request, limit: int = 40_000) -> Response:
        # The query is offloaded...
        rows = await asyncio.to_thread(db(request).activity_rows, limit)
        # BUG: ...but serialising 40,000 rows is CPU work too, and it runs on the loop.
        return Response(pipeline.export_json(rows), media_type="application/json")

    @app.get("/reports/activity.csv")
    async def activity_csv(request: Request, limit: int = 40_000) -> Response:
        # Known slow (~0.2 s), admin-only, run once a night: its test allows it 1 s.
        rows = await asyncio.to_thread(db(request).activity_rows, limit)
        return Response(pipeline.export_csv(rows), media_type="text/csv")

    @app.get("/search")
    async def search(q: str, request: Request) -> dict:
        # BUG: QUERY_RE backtracks exponentially on some inputs; a user can freeze the server.
        if not pipeline.validate_query(q):
            raise HTTPException(422, "invalid query")
        return {"query": q, "results": await asyncio.to_thread(db(request).find_documents, q)}

    app.include_router(fixed.router)
    return app
