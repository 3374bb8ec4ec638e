"""Cost of ``python -m loopguard run`` on a served endpoint: the same uvicorn server, with and
without it, under the same load, side by side.

    python benchmarks/served_overhead.py [--requests 5000] [--concurrency 20] [--rounds 4]

The server is a Starlette app on uvicorn (its default loop: uvloop when installed; ``--loop
asyncio`` for the stdlib's), one process on 127.0.0.1; the endpoint ``GET /item`` returns a
small JSON document. The load is ``--concurrency`` keep-alive connections from a plain asyncio
HTTP/1.1 client in this process (far cheaper per request than an HTTP library, so the server
is what is measured), ``--requests`` requests per round after a warm-up. Rounds alternate
plain / under loopguard, the order flipping every round, so machine noise hits both sides
alike; the table shows each side's median requests per second and latency p50/p99 over the
rounds, and the ratios.

A request-response ping-pong between two processes is bound by how fast an idle CPU wakes up,
and loopguard's threads (the watchdog, the lag probe's 10 ms timer, the reporter) keep the CPUs
from idling deeply: on a 2-core VM a plain server served 3,477 req/s alone and 6,215 with a
process beside it that sleeps 0.5 ms in a loop, so loopguard's side came out 1.4x *faster*.
That process runs during both sides by default, to compare the servers rather than the CPUs'
idle states (``--no-waker``: without it).

No instruction count here (unlike ``loop_overhead.py --callgrind``): under valgrind a served
request takes ~50x longer, and the work both servers do per unit of time (uvicorn's tick every
0.1 s; loopguard's lag probe and reporter) then swamps the work per request.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HOST = "127.0.0.1"
APP = """
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

async def item(request):
    return JSONResponse({"id": 42, "name": "widget", "tags": ["a", "b", "c"], "price": 9.5})

app = Starlette(routes=[Route("/item", item)])
"""
REQUEST = b"GET /item HTTP/1.1\r\nHost: bench\r\n\r\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


async def _one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(REQUEST)
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    await reader.readexactly(length)


async def _drive(port: int, requests: int, concurrency: int, limit: float) -> list[float]:
    """Latencies (seconds) of ``requests`` requests over ``concurrency`` connections."""
    latencies: list[float] = []
    left = requests
    deadline = time.monotonic() + limit

    async def connection() -> None:
        nonlocal left
        reader, writer = await asyncio.open_connection(HOST, port)
        try:
            while left > 0 and time.monotonic() < deadline:
                left -= 1
                sent = time.perf_counter()
                await _one(reader, writer)
                latencies.append(time.perf_counter() - sent)
        finally:
            writer.close()

    await asyncio.gather(*(connection() for _ in range(concurrency)))
    return latencies


class Server:
    def __init__(self, workdir: str, loop: str, watched: bool) -> None:
        self.port = free_port()
        cmd = [
            "python", "-m", "uvicorn", "app:app", "--host", HOST, "--port", str(self.port),
            "--log-level", "warning", "--loop", loop,
        ]  # fmt: skip
        prefix = [sys.executable, "-m", "loopguard", "run", "--"] if watched else []
        if not watched:
            cmd[0] = sys.executable
        self.cmd = [*prefix, *cmd]
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Server:
        self.proc = subprocess.Popen(self.cmd, cwd=self.workdir, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with socket.create_connection((HOST, self.port), timeout=1):
                    return self
            except OSError:
                if self.proc.poll() is not None:
                    sys.exit(f"the server exited: {self.cmd}")
                time.sleep(0.05)
        self.proc.kill()
        sys.exit("the server did not start within 30 s")

    def __exit__(self, *exc: object) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


def _round(workdir: str, args: argparse.Namespace, watched: bool) -> tuple[float, float, float]:
    """(requests per second, p50, p99) of one round."""
    with Server(workdir, args.loop, watched) as server:
        asyncio.run(_drive(server.port, 200, args.concurrency, 30))  # warm-up
        start = time.perf_counter()
        lat = asyncio.run(_drive(server.port, args.requests, args.concurrency, 120))
        elapsed = time.perf_counter() - start
    lat.sort()
    return len(lat) / elapsed, lat[len(lat) // 2], lat[min(len(lat) - 1, int(0.99 * len(lat)))]


WAKER = "import time\nfor _ in range(2_000_000):\n    time.sleep(0.0005)\n"


def _timed(args: argparse.Namespace) -> None:
    waker = subprocess.Popen([sys.executable, "-c", WAKER]) if args.waker else None
    try:
        with tempfile.TemporaryDirectory() as workdir:
            Path(workdir, "app.py").write_text(APP)
            sides: dict[bool, list[tuple[float, float, float]]] = {False: [], True: []}
            for r in range(args.rounds):
                for watched in (False, True) if r % 2 == 0 else (True, False):
                    sides[watched].append(_round(workdir, args, watched))
    finally:
        if waker is not None:
            waker.kill()
            waker.wait(timeout=10)
    rows = {}
    for watched, runs in sides.items():
        rows[watched] = tuple(statistics.median(x[i] for x in runs) for i in range(3))
    print(
        f"python {sys.version.split()[0]}, uvicorn --loop {args.loop}, {args.requests} requests x "
        f"{args.rounds} rounds per side, {args.concurrency} connections, medians over rounds"
        + ("" if args.waker else ", no waker")
    )
    print(f"{'':<26}{'req/s':>8}{'p50':>10}{'p99':>10}")
    for watched, name in ((False, "plain uvicorn"), (True, "python -m loopguard run")):
        rps, p50, p99 = rows[watched]
        print(f"{name:<26}{rps:>8.0f}{p50 * 1e3:>8.2f}ms{p99 * 1e3:>8.2f}ms")
    off, on = rows[False], rows[True]
    ratios = [on[i] / off[i] for i in range(3)]
    print(f"{'ratio run/plain':<26}{ratios[0]:>8.3f}{ratios[1]:>10.3f}{ratios[2]:>10.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=5000, help="per round")
    ap.add_argument("--concurrency", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--loop", choices=["auto", "asyncio", "uvloop"], default="auto")
    ap.add_argument(
        "--no-waker",
        dest="waker",
        action="store_false",
        help="without the process that keeps the CPUs from idling deeply (see above)",
    )
    _timed(ap.parse_args())


if __name__ == "__main__":
    main()
