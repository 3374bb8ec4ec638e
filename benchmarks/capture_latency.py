"""How late a blocked thread's stack is captured, GIL-free reader vs taking the GIL.

For each blocking workload (a GIL-releasing sleep, and C calls that hold the GIL: a
catastrophic regex, ``sorted`` of 3M floats, ``json.dumps`` of a large object) a worker thread
starts the call; 50 ms later the main thread reads the worker's stack

* "native": with ``_native._reader_sample`` (the watchdog's sampler: reads memory, no GIL), and
* "gil": with ``sys._current_frames()``, which needs the GIL, like the fallback sampler.

The figure is how long after the 50 ms mark the stack was in hand, and whether it shows the
blocking call (the worker's ``<lambda>`` frame).

Then the per-sample cost of the native reader on a thread blocked under a stack of the given
depth, and the cost of naming what a blocked system call waits on (a TCP socket, a FIFO, a
child process, a lock, a sleep): the watchdog does that after a confirmed block's stack is in
hand, and again only when the call or its descriptor changes (Linux).

    python benchmarks/capture_latency.py [--rounds 3] [--depths 10,50,200]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from typing import Optional

from loopguard import _native

WORKLOADS = ["sleep", "regex", "sorted", "json"]
OBJECT_KINDS = ["tcp recv", "fifo read", "child wait", "lock", "sleep"]
DELAY = 0.05


def _workload(kind: str):
    import random
    import re

    if kind == "sleep":
        return lambda: time.sleep(0.4)
    if kind == "regex":
        return lambda: re.match(r"(a+)+$", "a" * 23 + "b")
    if kind == "sorted":
        data = [random.random() for _ in range(3_000_000)]
        return lambda: sorted(data)
    if kind == "json":
        obj = [{"k": i, "v": [str(i)] * 20} for i in range(150_000)]
        return lambda: json.dumps(obj)
    raise ValueError(kind)


def _capture(kind: str, sampler: str) -> tuple[float, bool]:
    """Seconds after the delay until the stack was read, and whether it showed the call."""
    block = _workload(kind)
    box: dict = {}
    go = threading.Event()

    def worker() -> None:
        box["tstate"] = _native._reader_current_tstate()
        go.wait()
        block()

    t = threading.Thread(target=worker)
    t.start()
    while "tstate" not in box:
        time.sleep(0.001)
    t0 = _native.now_ns()
    go.set()
    if sampler == "native":
        # Returning to Python needs the GIL; the sample carries the time it was complete.
        sample = json.loads(_native._reader_sample(box["tstate"], t.ident, DELAY))
        functions = [f["function"] for f in sample["frames"]]
        done = sample["offset_ns"]
    else:
        time.sleep(DELAY)  # needs the GIL back to return
        frame = sys._current_frames().get(t.ident)
        done = _native.now_ns()
        functions = []
        while frame is not None:
            functions.append(frame.f_code.co_name)
            frame = frame.f_back
    late = (done - t0) / 1e9 - DELAY
    t.join()
    return late, any(f.endswith("<lambda>") for f in functions)


def _sample_cost(depth: int, seconds: float = 1.0) -> dict:
    stop = threading.Event()
    box: dict = {}

    def rec(n: int) -> None:
        if n <= 0:
            box["tstate"] = _native._reader_current_tstate()
            stop.wait()
        else:
            rec(n - 1)

    t = threading.Thread(target=rec, args=(depth,))
    t.start()
    while "tstate" not in box:
        time.sleep(0.001)
    time.sleep(0.02)
    try:
        return _native._reader_stress(box["tstate"], t.ident, seconds)
    finally:
        stop.set()
        t.join()


def _blocked_in(kind: str):
    """Starts a thread blocked in a system call of ``kind`` for about a second; returns its
    kernel thread id, and a function that ends the block and joins the thread."""
    import os
    import socket
    import subprocess
    import tempfile

    box: dict = {}
    cleanup = []
    if kind == "tcp recv":
        listener = socket.create_server(("127.0.0.1", 0))
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
        cleanup += [client.close, server.close, listener.close]
        release = lambda: server.sendall(b"x")  # noqa: E731
        block = lambda: client.recv(1)  # noqa: E731
    elif kind == "fifo read":
        path = os.path.join(tempfile.mkdtemp(), "x.fifo")
        os.mkfifo(path)
        rfd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        os.set_blocking(rfd, True)
        wfd = os.open(path, os.O_WRONLY)
        cleanup += [lambda: os.close(rfd), lambda: os.close(wfd), lambda: os.unlink(path)]
        release = lambda: os.write(wfd, b"x")  # noqa: E731
        block = lambda: os.read(rfd, 1)  # noqa: E731
    elif kind == "child wait":
        child = subprocess.Popen(["sleep", "30"])
        release = child.kill
        block = child.wait
    elif kind == "lock":
        lock = threading.Lock()
        lock.acquire()
        release = lock.release
        block = lambda: lock.acquire() and lock.release()  # noqa: E731
    else:
        done = threading.Event()
        release = done.set
        block = lambda: time.sleep(0.3)  # noqa: E731

    def run() -> None:
        box["tid"] = threading.get_native_id()
        block()

    t = threading.Thread(target=run)
    t.start()
    time.sleep(0.1)

    def end() -> None:
        release()
        t.join()
        for c in cleanup:
            c()

    return box["tid"], end


def _object_cost(kind: str, rounds: int) -> tuple[Optional[str], float]:
    """What the watchdog names for a thread blocked in ``kind``, and the median cost (s)."""
    texts, costs = [], []
    for _ in range(rounds):
        tid, end = _blocked_in(kind)
        try:
            text, ns = _native._waited_describe(tid)
        finally:
            end()
        texts.append(text)
        costs.append(ns / 1e9)
    return texts[-1], statistics.median(costs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--depths", default="10,50,200")
    args = ap.parse_args()

    print(f"Python {sys.version.split()[0]}: stack capture {DELAY * 1e3:.0f} ms into a block")
    print(f"{'workload':<8} {'sampler':<7} {'late (median)':>14} {'in call':>8}")
    for kind in WORKLOADS:
        for sampler in ("native", "gil"):
            runs = [_capture(kind, sampler) for _ in range(args.rounds)]
            late = statistics.median(r[0] for r in runs) * 1e3
            hits = sum(r[1] for r in runs)
            print(f"{kind:<8} {sampler:<7} {late:>12.1f}ms {hits:>5}/{args.rounds}")

    print("\nnative per-sample cost (stack read twice, validated)")
    for depth in (int(d) for d in args.depths.split(",")):
        r = _sample_cost(depth)
        print(
            f"depth {depth:>4}: p50 {r['p50_ns'] / 1e3:7.1f}us  p99 {r['p99_ns'] / 1e3:7.1f}us  "
            f"mean {r['mean_ns'] / 1e3:7.1f}us  ({r['ok']}/{r['samples']} ok)"
        )

    print("\nnaming what a blocked system call waits on (once per block, after the stack)")
    for kind in OBJECT_KINDS:
        text, cost = _object_cost(kind, args.rounds)
        print(f"{kind:<10} {cost * 1e6:8.1f}us  {text}")


if __name__ == "__main__":
    main()
