"""``/v2``: the blocking endpoints of ``main.py``, fixed.

Three ways out, depending on the kind of work:

* waiting (a blocking client, a slow query): run it in a thread with ``asyncio.to_thread``,
  or declare the endpoint with plain ``def`` so that FastAPI runs it in its threadpool;
* CPU work in pure Python: do it in slices, giving the loop back between them (and stream
  the result when there is one). A worker thread is no cure here: it holds the GIL while it
  computes, so the loop thread has to fight for it, and on a busy machine loopguard reports
  the loop "starved of the GIL". (A ProcessPoolExecutor is the other way out.);
* pathological work (an exponential regex): do not offload it, fix it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import StreamingResponse

from . import images, pipeline, scanner
from .models import DocumentIn
from .storage import ACTIVITY_COLUMNS, Storage

router = APIRouter(prefix="/v2")


def db(request: Request) -> Storage:
    return request.app.state.storage


@router.post("/documents", status_code=201)
async def upload_document(doc: DocumentIn, request: Request) -> dict[str, int]:
    # The scanner client still blocks, but now a worker thread waits for it, not the loop.
    # (asyncio.to_thread(f, *args) is the short spelling of loop.run_in_executor(None, f, *args).)
    loop = asyncio.get_running_loop()
    if not await loop.run_in_executor(None, scanner.scan, doc.body.encode()):
        raise HTTPException(422, "the document did not pass the malware scan")
    doc_id = await asyncio.to_thread(db(request).add_document, doc.name, doc.body)
    return {"id": doc_id}


@router.post("/documents-threadpool", status_code=201)
def upload_document_in_threadpool(doc: DocumentIn, request: Request) -> dict[str, int]:
    # The same upload as a plain ``def`` endpoint: FastAPI runs all of it in its threadpool.
    if not scanner.scan(doc.body.encode()):
        raise HTTPException(422, "the document did not pass the malware scan")
    return {"id": db(request).add_document(doc.name, doc.body)}


@router.post("/documents/{doc_id}/render")
async def render_document(doc_id: int, request: Request) -> dict[str, int]:
    doc = await asyncio.to_thread(db(request).document, doc_id)
    if doc is None:
        raise HTTPException(404, "no such document")
    pages = await render_in_slices(doc["body"])
    return {"id": doc_id, "pages": len(pages)}


async def render_in_slices(text: str, paragraphs: int = 50) -> list[list[str]]:
    """``pipeline.render_pages``, ``paragraphs`` at a time (a few ms each)."""
    blocks = text.split("\n\n")
    lines: list[str] = []
    for start in range(0, len(blocks), paragraphs):
        lines += pipeline.layout_lines("\n\n".join(blocks[start : start + paragraphs]))
        await asyncio.sleep(0)  # let the loop serve others between slices
    return pipeline.paginate(lines)


@router.post("/documents/{doc_id}/thumbnails")
async def make_thumbnails(doc_id: int, request: Request, pages: int = 3) -> dict[str, int]:
    """Layout in slices on the loop, then each stage that waits or runs C code in a thread:
    Pillow, the JSON checkpoint on disk, the sqlite3 insert. All three let go of the GIL."""
    doc = await asyncio.to_thread(db(request).document, doc_id)
    if doc is None:
        raise HTTPException(404, "no such document")
    count = await process(request.app.state, doc_id, doc["body"], Job(doc_id), thumbnails=pages)
    return {"id": doc_id, "thumbnails": count}


class Job:
    """The progress of one document's processing, for its WebSocket listeners."""

    def __init__(self, doc_id: int) -> None:
        self.doc_id = doc_id
        self.stages: list[str] = []
        self.done = False
        self.changed = asyncio.Event()

    def advance(self, stage: str, *, done: bool = False) -> None:
        self.stages.append(stage)
        self.done = done
        self.changed.set()
        self.changed = asyncio.Event()


async def process(state: Any, doc_id: int, text: str, job: Job, thumbnails: int = 3) -> int:
    """The pipeline: layout, thumbnails of the first pages, checkpoints after each stage,
    storage.

    Several documents are processed at once: layout slices are small (~5 ms), so that the loop
    stays responsive while their slices take turns."""
    pages = await render_in_slices(text, paragraphs=10)
    await asyncio.to_thread(checkpoint, state.workdir, doc_id, "layout", {"pages": len(pages)})
    job.advance("layout")
    pngs = await asyncio.to_thread(images.thumbnails, pages, thumbnails)
    await asyncio.to_thread(
        checkpoint, state.workdir, doc_id, "thumbnails", {"sizes": [len(p) for p in pngs]}
    )
    job.advance("thumbnails")
    count = await asyncio.to_thread(state.storage.save_thumbnails, doc_id, pngs)
    job.advance("stored", done=True)
    return count


@router.post("/documents/{doc_id}/process", status_code=202)
async def start_processing(doc_id: int, request: Request) -> dict[str, Any]:
    """Starts processing in the background; follow it on ``/v2/documents/{id}/progress``."""
    state = request.app.state
    doc = await asyncio.to_thread(state.storage.document, doc_id)
    if doc is None:
        raise HTTPException(404, "no such document")
    job = state.jobs[doc_id] = Job(doc_id)
    task = asyncio.create_task(process(state, doc_id, doc["body"], job))
    state.tasks.add(task)  # keep a reference until it is done
    task.add_done_callback(state.tasks.discard)
    return {"id": doc_id, "progress": f"/v2/documents/{doc_id}/progress"}


@router.websocket("/documents/{doc_id}/progress")
async def progress(ws: WebSocket, doc_id: int) -> None:
    """Sends ``{"type": "stage", "stage": ...}`` as stages finish, then ``{"type": "done"}``;
    answers ``{"type": "ping", "id": N}`` with ``{"type": "pong", "id": N}`` (the heartbeat)."""
    await ws.accept()
    job = ws.app.state.jobs.get(doc_id)
    if job is None:
        await ws.close(code=4404, reason="no such job")
        return

    async def heartbeat() -> None:
        while True:
            msg = await ws.receive_json()
            if msg.get("type") == "ping":
                await ws.send_json({"type": "pong", "id": msg.get("id")})

    beats = asyncio.create_task(heartbeat())
    try:
        sent = 0
        while True:
            changed = job.changed
            while sent < len(job.stages):
                await ws.send_json({"type": "stage", "stage": job.stages[sent]})
                sent += 1
            if job.done:
                await ws.send_json({"type": "done", "stages": job.stages})
                break
            waiter = asyncio.ensure_future(changed.wait())
            await asyncio.wait({waiter, beats}, return_when=asyncio.FIRST_COMPLETED)
            if beats.done():  # the client went away
                waiter.cancel()
                break
        # Keep answering pings until the client closes.
        await beats
    except WebSocketDisconnect:
        pass
    finally:
        beats.cancel()


def checkpoint(workdir: Path, doc_id: int, stage: str, data: dict) -> Path:
    """Writes a stage's result as ``WORKDIR/DOC_ID/STAGE.json`` (atomically: a crash leaves the
    previous checkpoint, never half of one)."""
    folder = workdir / str(doc_id)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stage}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"document": doc_id, "stage": stage, **data}, sort_keys=True))
    tmp.replace(path)
    return path


@router.get("/teams/{team_id}/members")
def team_members(team_id: int, request: Request) -> list[dict]:
    # A plain ``def`` endpoint: FastAPI runs it in its threadpool, off the loop.
    # (The lasting fix is CREATE INDEX events_user ON events (user_id): try it.)
    return db(request).team_members(team_id)


@router.get("/reports/activity.json")
async def activity_report(request: Request, limit: int = 40_000) -> StreamingResponse:
    return StreamingResponse(stream_activity(db(request), limit), media_type="application/json")


async def stream_activity(storage: Storage, limit: int, page: int = 1_000) -> AsyncIterator[str]:
    """The report as JSON, one row per line, fetched and serialised ``page`` rows at a time.

    Each page is a short query in a thread and a few ms of ``json.dumps`` on the loop; the
    loop serves other requests in between, and the report is never all in memory.
    """
    yield '{"rows": [\n'
    sent, last_id = 0, 0
    while sent < limit:
        rows = await asyncio.to_thread(storage.activity_page, last_id, min(page, limit - sent))
        if not rows:
            break
        lines = (
            json.dumps(dict(zip(ACTIVITY_COLUMNS, row, strict=True)), sort_keys=True)
            for row in rows
        )
        yield (",\n" if sent else "") + ",\n".join(lines)
        sent, last_id = sent + len(rows), rows[-1][0]
    yield f'\n],\n"count": {sent}}}\n'


@router.get("/search")
async def search(q: str, request: Request) -> dict:
    if not pipeline.validate_query_safely(q):
        raise HTTPException(422, "invalid query")
    return {"query": q, "results": await asyncio.to_thread(db(request).find_documents, q)}
