"""ST-CONC-03: the same upload served three ways, under load, on a real uvicorn server.

    python examples/benchmark.py            # full load: 50 concurrent uploads per variant
    python examples/benchmark.py --quick    # reduced load, under a minute

For each variant of ``POST /documents`` (an ``async def`` that blocks, an ``async def`` that
offloads, a plain ``def`` run in the threadpool) starts the example app on a real uvicorn
server on 127.0.0.1 (a free port) under ``python -m loopguard run``, as a service's CI load test
would::

    python -m loopguard run --threshold 100ms --json REPORT -- python -m uvicorn --factory \
        benchmark:served_app --app-dir examples --host 127.0.0.1 --port PORT

and measures, while 5 documents are processed in the background and WebSocket clients send
heartbeats: requests per second, upload latency p50/p99, the heartbeat round trip p99, the
latency of ``GET /health`` (the rest of the API); then stops the server with SIGINT and reads
loopguard's JSON report: the loop's lag (a 10 ms timer on the server's loop: how late it ran,
p99 and max) and the blocks on it, with their call sites and requests.

SLO (the service's target): heartbeat p99 < 100 ms, API p99 < 500 ms. Exits with status 1 when
a ``/v2`` variant breaks it. Every loop here is bounded in count and in time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import websockets

sys.path.insert(0, str(Path(__file__).resolve().parent))

from app.main import create_app
from app.storage import Storage

HERE = Path(__file__).resolve().parent

HOST = "127.0.0.1"
VARIANTS = {
    "async def, blocks": "/documents",
    "async def, offloads (/v2)": "/v2/documents",
    "def, threadpool (/v2)": "/v2/documents-threadpool",
}
HEARTBEAT_SLO = 0.1
API_SLO = 0.5
PARAGRAPH = "The Supplier shall deliver the Services with reasonable skill and care. " * 6


@dataclass
class Load:
    uploads: int
    concurrency: int
    ws_clients: int
    documents: int
    time_limit: float


FULL = Load(uploads=50, concurrency=50, ws_clients=10, documents=5, time_limit=60.0)
QUICK = Load(uploads=10, concurrency=10, ws_clients=3, documents=5, time_limit=15.0)


@dataclass
class Result:
    variant: str
    rps: float = 0.0
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    heartbeats: list[float] = field(default_factory=list)
    api: list[float] = field(default_factory=list)
    lag_p99: float = float("nan")
    lag_max: float = float("nan")
    blocks: list[dict[str, Any]] = field(default_factory=list)
    """The blocks of loopguard's JSON report."""


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def served_app():  # type: ignore[no-untyped-def]
    """The app the server process serves (uvicorn --factory): the database this script
    seeded (``BENCHMARK_DB``)."""
    return create_app(Storage(os.environ["BENCHMARK_DB"]))


class Server:
    """uvicorn in its own process, under ``python -m loopguard run``; stopped with SIGINT,
    after which loopguard's JSON report (``report``) holds its blocks and its loop's lag."""

    def __init__(self, db: Path, port: int, report: Path) -> None:
        self.command = [
            sys.executable, "-m", "loopguard", "run", "--threshold", "100ms",
            "--json", str(report), "--",
            "python", "-m", "uvicorn", "--factory", "benchmark:served_app",
            "--app-dir", str(HERE), "--host", HOST, "--port", str(port),
            "--log-level", "warning", "--ws", "websockets-sansio",
        ]  # fmt: skip
        self.env = {**os.environ, "BENCHMARK_DB": str(db)}
        self.base = f"http://{HOST}:{port}"
        self.report = report
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Server:
        # loopguard's live reports go to this script's stderr, as they would in a CI log.
        self.proc = subprocess.Popen(self.command, env=self.env)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"benchmark: the server exited ({self.proc.returncode})")
            try:
                if httpx.get(f"{self.base}/health", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                time.sleep(0.1)
        self.proc.kill()
        raise SystemExit("benchmark: uvicorn did not start within 30 s")

    def __exit__(self, *exc: object) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def loopguard_report(self) -> dict[str, Any]:
        return json.loads(self.report.read_text())


async def heartbeat_client(base: str, doc_id: int, stop: asyncio.Event, out: list[float]) -> None:
    url = base.replace("http://", "ws://") + f"/v2/documents/{doc_id}/progress"
    async with websockets.connect(url) as ws:
        n = 0
        while not stop.is_set() and n < 10_000:
            n += 1
            sent = time.perf_counter()
            await ws.send(json.dumps({"type": "ping", "id": n}))
            while True:  # stage messages may come first
                msg = json.loads(await asyncio.wait_for(ws.recv(), 10))
                if msg["type"] == "pong" and msg["id"] == n:
                    out.append(time.perf_counter() - sent)
                    break
            await asyncio.sleep(0.05)


async def api_probe(client: httpx.AsyncClient, stop: asyncio.Event, out: list[float]) -> None:
    for _ in range(10_000):
        if stop.is_set():
            return
        sent = time.perf_counter()
        await client.get("/health")
        out.append(time.perf_counter() - sent)
        await asyncio.sleep(0.05)


async def run_variant(name: str, path: str, base: str, docs: list[int], load: Load) -> Result:
    result = Result(name)
    limits = httpx.Limits(max_connections=load.concurrency + 5)
    timeout = httpx.Timeout(load.time_limit)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=timeout) as client:
        for doc_id in docs:  # 5 documents processing in the background
            (await client.post(f"/v2/documents/{doc_id}/process")).raise_for_status()
        stop = asyncio.Event()
        background = [
            asyncio.create_task(
                heartbeat_client(base, docs[i % len(docs)], stop, result.heartbeats)
            )
            for i in range(load.ws_clients)
        ]
        background.append(asyncio.create_task(api_probe(client, stop, result.api)))
        await asyncio.sleep(0.2)
        gate = asyncio.Semaphore(load.concurrency)

        async def upload(i: int) -> None:
            async with gate:
                sent = time.perf_counter()
                body = {"name": f"upload-{i}.txt", "body": PARAGRAPH}
                try:
                    resp = await client.post(path, json=body)
                    resp.raise_for_status()
                except httpx.HTTPError:
                    result.errors += 1
                    return
                result.latencies.append(time.perf_counter() - sent)

        start = time.perf_counter()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(
                asyncio.gather(*(upload(i) for i in range(load.uploads))), load.time_limit
            )
        elapsed = time.perf_counter() - start
        stop.set()
        await asyncio.gather(*background, return_exceptions=True)
    result.rps = len(result.latencies) / elapsed if elapsed else 0.0
    return result


def ms(seconds: float) -> str:
    return "-" if seconds != seconds else f"{seconds * 1000:.0f} ms"


def table(results: list[Result]) -> str:
    head = (
        "variant", "req/s", "upload p50", "upload p99", "heartbeat p99", "API p99",
        "lag p99", "lag max", "blocks",
    )  # fmt: skip
    rows = [head]
    for r in results:
        rows.append(
            (
                r.variant,
                f"{r.rps:.1f}",
                ms(statistics.median(r.latencies)) if r.latencies else "-",
                ms(pct(r.latencies, 0.99)),
                ms(pct(r.heartbeats, 0.99)),
                ms(pct(r.api, 0.99)),
                ms(r.lag_p99),
                ms(r.lag_max),
                str(len(r.blocks)),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = ("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows)
    return "\n".join(line.rstrip() for line in lines)


def _request(event: dict[str, Any]) -> str:
    request = (event.get("context") or {}).get("request")
    return f" ({request})" if request else ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="reduced load, under a minute")
    args = parser.parse_args(argv)
    load = QUICK if args.quick else FULL
    with tempfile.TemporaryDirectory() as tmp:
        storage = Storage(Path(tmp) / "docs.db")
        storage.seed(users=2_000, events=10_000)
        text = "\n\n".join(f"{i}. {PARAGRAPH}" for i in range(1, 61))
        docs = [storage.add_document(f"contract-{i}.txt", text) for i in range(load.documents)]
        results: list[Result] = []
        # One server per variant: its loopguard report is that variant's blocks and lag.
        for i, (name, path) in enumerate(VARIANTS.items()):
            server = Server(storage.path, free_port(), Path(tmp) / f"variant-{i}.json")
            with server:
                result = asyncio.run(run_variant(name, path, server.base, docs, load))
            report = server.loopguard_report()
            loops = report["lag"]["loops"]
            if loops:
                result.lag_p99 = max(loop["p99_ms"] for loop in loops) / 1000
                result.lag_max = max(loop["max_ms"] for loop in loops) / 1000
            result.blocks = report["events"]
            results.append(result)
    print(table(results))
    print(f"\nload: {load}; SLO: heartbeat p99 < {ms(HEARTBEAT_SLO)}, API p99 < {ms(API_SLO)}")
    for r in results:
        sites = Counter(
            (f"{e['site']['file']}:{e['site']['line']} in {e['site']['function']}", _request(e))
            for e in r.blocks
            if e["site"]
        )
        for (site, request), n in sites.most_common(3):
            print(f"  {r.variant}: {n} block(s) at {site}{request}")
    broken = [
        r.variant
        for r in results
        if "/v2" in r.variant
        and (
            pct(r.heartbeats, 0.99) >= HEARTBEAT_SLO
            or pct(r.api, 0.99) >= API_SLO
            or not r.heartbeats
            or r.errors
        )
    ]
    for name in broken:
        print(f"benchmark: {name} breaks the SLO")
    return 1 if broken else 0


if __name__ == "__main__":
    raise SystemExit(main())
