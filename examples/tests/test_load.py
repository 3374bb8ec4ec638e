"""The service's latency target, held in CI (ST-CONC-03, reduced load, in-process).

Five documents processing in the background while a WebSocket client follows one of them and
sends heartbeats. The service's SLO is a heartbeat answered within 100 ms. Here it is held on
the loop itself: the p99 of how late the loop ran a 10 ms timer (``loopguard.lag``), and the
heartbeat's round trip (median within the SLO). Both keep a
margin for a shared CI machine (whose other jobs make every thread wait for a CPU at times);
a new blocking call in any ``/v2`` stage (every bug in this service blocks for 300 ms or more)
still fails here, at its line, through loopguard's threshold.
"""

from __future__ import annotations

import statistics
import time

import pytest
from fastapi.testclient import TestClient

DOCUMENTS = 5
HEARTBEAT_SLO = 0.1
HEARTBEAT_MAX = 0.5  # one slow heartbeat on a busy CI machine is not a regression
LAG_P99_MAX = 0.25
DEADLINE = 60.0


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


# max_lag catches a stalled loop outright; the p99 below holds the SLO without failing on the
# one timer that a loaded CI machine delays while the loop thread waits for a CPU.
@pytest.mark.loopguard(max_lag="1s")
def test_v2_holds_the_slo_while_documents_process(loop_watch, app, storage, contract_text):
    short = contract_text[: len(contract_text) // 5]  # 300 paragraphs, 60 pages
    ids = [storage.add_document(f"contract-{i}.txt", short) for i in range(DOCUMENTS)]
    rtts: list[float] = []
    stages: list[str] = []
    with TestClient(app) as client:
        for doc_id in ids:
            assert client.post(f"/v2/documents/{doc_id}/process").status_code == 202
        with client.websocket_connect(f"/v2/documents/{ids[-1]}/progress") as ws:
            deadline = time.monotonic() + DEADLINE
            n = 0
            while "done" not in stages and time.monotonic() < deadline:
                n += 1
                sent = time.perf_counter()
                ws.send_json({"type": "ping", "id": n})
                while True:
                    msg = ws.receive_json()
                    if msg["type"] == "pong" and msg["id"] == n:
                        rtts.append(time.perf_counter() - sent)
                        break
                    stages.append(msg.get("stage", msg["type"]))
                time.sleep(0.01)
        # Everything started has finished before the client's loop stops.
        while app.state.tasks and time.monotonic() < deadline:
            time.sleep(0.05)
    assert stages == ["layout", "thumbnails", "stored", "done"]
    assert not app.state.tasks
    print(
        f"\nheartbeat round trip over {len(rtts)} beats: "
        f"p50 {statistics.median(rtts) * 1000:.1f} ms, p99 {p99(rtts) * 1000:.1f} ms"
    )
    print(f"loop lag: {loop_watch.lag}")
    assert statistics.median(rtts) < HEARTBEAT_SLO
    assert p99(rtts) < HEARTBEAT_MAX
    assert loop_watch.lag.samples > 10 and loop_watch.lag.p99 < LAG_P99_MAX, loop_watch.lag
