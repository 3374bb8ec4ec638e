"""The clause a report gives a system call and what it waited on."""

import pytest
from loopguard._events import BlockEvent
from loopguard._failure import format_event, syscall_clause


def event(syscall, obj, gil="released"):
    return BlockEvent(
        id=1, duration=0.3, threshold=0.1, thread_name="MainThread", thread_ident=1,
        task_name=None, captured_after=0.1, starved=False, loop_kind="asyncio", test=None,
        phase=None, start_ns=0, end_ns=0, gil=gil, syscall=syscall, syscall_object=obj,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("syscall", "obj", "clause"),
    [
        ("recvfrom", "TCP 127.0.0.1:51234 → 127.0.0.1:8080",
         "recvfrom on TCP 127.0.0.1:51234 → 127.0.0.1:8080"),
        ("read", "/tmp/x.fifo (FIFO)", "read on /tmp/x.fifo (FIFO)"),
        ("wait4", "pid 1234 (sleep 1)", "wait4 for pid 1234 (sleep 1)"),
        ("waitid", "any of 3 children", "waitid for any of 3 children"),
        ("clock_nanosleep", "sleeping", "clock_nanosleep (sleeping)"),
        ("ppoll", "3 fds", "ppoll on 3 fds"),
        ("recvfrom", None, "recvfrom"),
    ],
)  # fmt: skip
def test_the_clause_names_the_call_and_its_object(syscall, obj, clause):
    assert syscall_clause(event(syscall, obj)) == clause


def test_the_detail_line_carries_the_clause():
    text = "\n".join(format_event(event("read", "/tmp/x.fifo (FIFO)")))
    assert "GIL released, in the system call read on /tmp/x.fifo (FIFO)," in text
    text = "\n".join(format_event(event("read", "/dev/ttyS0 (character device)", gil="loop")))
    assert "GIL held by the loop thread, in the system call read on /dev/ttyS0 (ch" in text
    text = "\n".join(format_event(event("futex", "a lock or condition")))
    assert "GIL released, waiting on a lock or condition (futex)," in text
    # Without the object (another system, an older report): as before.
    assert "GIL released, waiting on a lock (futex)," in "\n".join(
        format_event(event("futex", None))
    )
