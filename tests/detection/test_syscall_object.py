"""End to end: a block spent in a system call names what the call waited on — the socket's
protocol and addresses, the FIFO's path, the child process, the lock — in the failure report
and as ``syscall_object`` in the JSON report."""

import json

import pytest

# The kernel's view of the loop thread is read on the full Linux build only.
pytestmark = pytest.mark.linux_full

HEADER = """
import asyncio, os, socket, subprocess, threading, time
import pytest
"""

INNER = dict(header=HEADER, args=("--loopguard-json=report.json",))


def longest(pytester):
    """The longest block of the session's JSON report."""
    report = json.loads((pytester.path / "report.json").read_text())
    return max(report["events"], key=lambda e: e["duration_ms"])


@pytest.mark.parametrize("timeout", [None, 5.0])
def test_a_socket_read_names_the_tcp_connection(inner, pytester, timeout):
    # The server replies 400 ms after the connection; the loop thread waits in recv meanwhile
    # (with a timeout, in a poll on the socket first).
    result = inner.run(
        f"TIMEOUT = {timeout!r}\n"
        """
def serve(listener):
    conn, _ = listener.accept()
    time.sleep(0.4)
    conn.sendall(b"x")
    conn.close()

@pytest.mark.asyncio
async def test_recv():
    listener = socket.create_server(("127.0.0.1", 0))
    threading.Thread(target=serve, args=(listener,), daemon=True).start()
    sock = socket.create_connection(listener.getsockname())
    sock.settimeout(TIMEOUT)
    local, server = sock.getsockname(), listener.getsockname()
    with open("addresses", "w") as f:
        f.write(f"{local[0]}:{local[1]} {server[0]}:{server[1]}")
    assert sock.recv(1) == b"x"  # the read
    sock.close()
    listener.close()
"""
    )
    inner.assert_blocked_at(result, "# the read", "test_recv")
    local, server = (pytester.path / "addresses").read_text().split()
    want = f"TCP {local} → {server}"
    ev = longest(pytester)
    calls = ("recvfrom",) if timeout is None else ("poll", "ppoll")
    assert ev["syscall"] in calls, ev
    assert ev["syscall_object"] == want, ev
    result.stdout.fnmatch_lines([f"*GIL released, in the system call {ev['syscall']} on {want},*"])


def test_a_fifo_read_names_the_fifo(inner, pytester):
    # The writer opens the FIFO at once and writes 400 ms later.
    result = inner.run(
        """
def write_later(path):
    fd = os.open(path, os.O_WRONLY)
    time.sleep(0.4)
    os.write(fd, b"x")
    os.close(fd)

@pytest.mark.asyncio
async def test_fifo():
    path = os.path.abspath("x.fifo")
    os.mkfifo(path)
    threading.Thread(target=write_later, args=(path,), daemon=True).start()
    fd = os.open(path, os.O_RDONLY)
    assert os.read(fd, 1) == b"x"  # the read
    os.close(fd)
"""
    )
    inner.assert_blocked_at(result, "# the read", "test_fifo")
    path = pytester.path / "x.fifo"
    ev = longest(pytester)
    assert ev["syscall"] == "read", ev
    assert ev["syscall_object"] == f"{path} (FIFO)", ev
    result.stdout.fnmatch_lines([f"*GIL released, in the system call read on {path} (FIFO),*"])


def test_a_subprocess_wait_names_the_child(inner, pytester):
    result = inner.run(
        """
@pytest.mark.asyncio
async def test_child():
    child = subprocess.Popen(["sleep", "0.4"])
    with open("pid", "w") as f:
        f.write(str(child.pid))
    child.wait()  # the wait
"""
    )
    inner.assert_blocked_at(result, "# the wait", "test_child")
    pid = int((pytester.path / "pid").read_text())
    ev = longest(pytester)
    assert ev["syscall"] == "wait4", ev
    assert ev["syscall_object"] == f"pid {pid} (sleep 0.4)", ev
    result.stdout.fnmatch_lines(
        [f"*GIL released, in the system call wait4 for pid {pid} (sleep 0.4),*"]
    )


def test_subprocess_run_names_the_child(inner, pytester):
    result = inner.run(
        """
@pytest.mark.asyncio
async def test_run():
    subprocess.run(["sleep", "0.4"], check=True)  # the run
"""
    )
    inner.assert_blocked_at(result, "# the run", "test_run")
    ev = longest(pytester)
    if ev["syscall"] in ("vfork", "clone", "clone3"):
        # A loaded machine can take longer than the threshold to start the child: the block
        # was first sampled in the call that waits for its exec, and says so by name.
        result.stdout.fnmatch_lines([f"*in the system call {ev['syscall']},*"])
        return
    assert ev["syscall"] == "wait4", ev
    assert ev["syscall_object"].startswith("pid ") and ev["syscall_object"].endswith(
        " (sleep 0.4)"
    ), ev
    result.stdout.fnmatch_lines(["*in the system call wait4 for pid * (sleep 0.4),*"])


def test_a_lock_held_by_another_thread_is_a_lock_or_condition(inner, pytester):
    result = inner.run(
        """
def hold(lock, held):
    with lock:
        held.set()
        time.sleep(0.4)

@pytest.mark.asyncio
async def test_lock():
    lock, held = threading.Lock(), threading.Event()
    threading.Thread(target=hold, args=(lock, held), daemon=True).start()
    held.wait()
    with lock:  # the lock
        pass
"""
    )
    inner.assert_blocked_at(result, "# the lock", "test_lock")
    ev = longest(pytester)
    assert ev["syscall"] == "futex", ev
    assert ev["syscall_object"] == "a lock or condition", ev
    result.stdout.fnmatch_lines(["*GIL released, waiting on a lock or condition (futex),*"])


def test_a_sleep_is_sleeping_and_running_code_names_nothing(inner, pytester):
    result = inner.run(
        """
@pytest.mark.asyncio
async def test_sleep():
    time.sleep(0.4)  # the sleep

@pytest.mark.asyncio
async def test_spin():
    end = time.monotonic() + 0.4
    while time.monotonic() < end:  # the spin
        pass
"""
    )
    # The spin may be recorded instead (as waiting for a CPU) on a loaded machine: its event
    # is what matters here.
    assert result.parseoutcomes()["failed"] >= 1
    report = json.loads((pytester.path / "report.json").read_text())
    by_test = {}
    for ev in report["events"]:
        name = ev["test"].rsplit("::", 1)[-1]
        if ev["duration_ms"] > by_test.get(name, {}).get("duration_ms", 0):
            by_test[name] = ev
    sleep, spin = by_test["test_sleep"], by_test["test_spin"]
    assert sleep["syscall"] in ("clock_nanosleep", "nanosleep", "select", "pselect6"), sleep
    assert sleep["syscall_object"] == "sleeping", sleep
    result.stdout.fnmatch_lines([f"*in the system call {sleep['syscall']} (sleeping),*"])
    assert spin["syscall"] is None and spin["syscall_object"] is None, spin
