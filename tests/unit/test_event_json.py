"""A judged block as JSON and back: the one encoder (``to_json``) and decoder (``from_json``)
that the JSON report, xdist and ``python -m loopguard`` share (in-process, no watchdog)."""

import dataclasses
import json
import os
import re
from pathlib import Path

import pytest
from loopguard import BlockEvent, Frame, Sample
from loopguard._events import Callback, FormatError, NativeFrame
from loopguard._failure import format_event
from loopguard._judge import Verdict

ROOT_FILES = ("app/handlers.py", "tests/test_upload.py")
LIBRARY = Frame(json.__file__, 383, "JSONEncoder.iterencode")


@pytest.fixture
def root(tmp_path):
    return tmp_path.resolve()


def full_event(root):
    """A block with every field set to something other than its default."""
    runner = Frame(os.path.join(root, "tests/test_upload.py"), 12, "test_upload")
    handler = Frame(os.path.join(root, "app/handlers.py"), 30, "handle")
    worker = Frame(os.path.join(root, "app/worker.py"), 7, "crunch")
    bridge = Frame("/usr/lib/python3/site-packages/sqlalchemy/util/concurrency.py", 203, "spawn")
    native = [
        NativeFrame("deflate_slow", "libz.so.1", 0x1A2B, "deflate.c", 1871),
        NativeFrame(None, "libz.so.1", 0x99, None, None),
        NativeFrame("zlib_compress", "zlib.cpython-311-x86_64-linux-gnu.so", 0x40),
    ]
    samples = [
        Sample(
            offset=0.101234567, count=3, stack=[runner, handler, LIBRARY], gil="other",
            gil_holder_ident=140_000_001, gil_holder_stack=[worker], late=True,
            error="a read failed", task_name="Task-3", syscall="futex",
            syscall_object="a lock or condition", running=True, callback=1, native_stack=native,
            native_note="in a system call",
        ),
        Sample(
            offset=0.2, count=1, stack=[runner, handler], gil="loop", gil_holder_ident=None,
            gil_holder_stack=[], late=False, error=None, task_name=None,
        ),
    ]  # fmt: skip
    callbacks = [
        Callback(first=0.0, last=0.05, min=0.05, max=0.07, samples=2, in_callback=True,
                 site=handler),
        Callback(first=0.07, last=0.3, min=0.23, max=0.312000001, samples=5, in_callback=False,
                 site=None),
    ]  # fmt: skip
    return BlockEvent(
        id=7, duration=0.312345678, threshold=0.1, thread_name="MainThread",
        thread_ident=139_000_000, task_name="Task-3", captured_after=0.101, starved=True,
        loop_kind="uvloop", test="tests/test_upload.py::test_upload", phase="setup",
        start_ns=5_000_000_123, end_ns=5_312_345_801, samples=samples, site=handler,
        innermost=LIBRARY, stack=[runner, handler, LIBRARY], await_chain=[runner, bridge],
        gil="other",
        gil_holder_thread="cruncher", gil_holder_stack=[worker], sites_changed=True, late=True,
        cause="gc", hint="a long garbage collection", fix="gc.freeze() after start-up",
        gc_time=0.2501, gc_cpu_time=0.1201, running=True,
        syscall="recvfrom", syscall_object="TCP 127.0.0.1:51234 → 127.0.0.1:8080",
        cpu_wait=0.012345678, holder_cpu_wait=0.0456789, callbacks=callbacks,
        native_stack=native, native_note="in a system call",
        request={"request": "POST /upload", "vars": {"request_id": "r-1"}},
    )  # fmt: skip


def every_field_is_set(ev):
    defaults = BlockEvent(
        id=0, duration=0.0, threshold=0.0, thread_name="", thread_ident=0, task_name=None,
        captured_after=None, starved=False, loop_kind="", test=None, phase=None, start_ns=0,
        end_ns=0,
    )  # fmt: skip
    return [
        f.name
        for f in dataclasses.fields(BlockEvent)
        if getattr(ev, f.name) == getattr(defaults, f.name) and f.name != "in_debugger"
    ]


def test_a_fully_populated_event_reads_back_equal(root):
    ev = full_event(root)
    assert every_field_is_set(ev) == []  # in_debugger events are dropped before any report
    data = json.loads(json.dumps(ev.to_json(root)))
    back = BlockEvent.from_json(data, root)
    assert back == ev
    assert back.samples == ev.samples and back.callbacks == ev.callbacks
    assert back.native_stack == ev.native_stack and back.samples[0].native_stack
    # Paths are relative to the root in the JSON, and joined to it again.
    assert data["site"]["file"] == "app/handlers.py"
    assert data["operation"]["file"] == json.__file__  # outside the root: as it is
    assert [f["file"] for f in data["await_chain"]] == [
        "tests/test_upload.py",
        "/usr/lib/python3/site-packages/sqlalchemy/util/concurrency.py",
    ]
    # Durations in milliseconds, to the nanosecond.
    assert data["duration_ms"] == 312.345678
    assert data["gc_ms"] == 250.1 and data["cpu_wait_ms"] == 12.345678
    assert data["fix"] == "gc.freeze() after start-up"
    # And once more: the JSON of what was read is the JSON that was written.
    assert back.to_json(root) == data


def test_a_verdict_reads_back_equal_and_keeps_its_baseline_key(root):
    ev = full_event(root)
    v = Verdict(
        event=ev, test=ev.test, phase="call", threshold=0.1, severity="MEDIUM",
        outcome="failed", reason=None, mode="fail", key=("app/handlers.py", "handle"),
        over_threshold=True,
    )  # fmt: skip
    data = json.loads(json.dumps(v.to_json(root, samples=True)))
    # The report's phase is the verdict's; the phase the block began in is kept beside it.
    assert (data["phase"], data["began_in"]) == ("call", "setup")
    back = Verdict.from_json(data, root)
    assert back == v
    # Without the samples (the JSON report's events): the same but for them.
    lean = Verdict.from_json(json.loads(json.dumps(v.to_json(root))), root)
    assert "samples" not in v.to_json(root)
    assert lean == v.replace(event=dataclasses.replace(ev, samples=[]))


def test_a_block_outside_any_test_reads_back_outside(root):
    ev = dataclasses.replace(full_event(root), test=None, phase=None)
    v = Verdict(
        event=ev, test="", phase="outside", threshold=0.1, severity="MEDIUM",
        outcome="recorded", reason="began outside any test", mode="fail", key=None,
    )  # fmt: skip
    back = Verdict.from_json(v.to_json(root), root)
    assert (back.test, back.phase, back.event.test, back.event.phase) == ("", "outside", None, None)


def test_the_site_keeps_the_source_line_it_was_written_with(root):
    site = Frame(os.path.join(root, "app/handlers.py"), 30, "handle")
    (root / "app").mkdir()
    (root / "app/handlers.py").write_text("\n" * 29 + "    time.sleep(0.3)  # the block\n")
    ev = dataclasses.replace(full_event(root), site=site)
    data = ev.to_json(root)
    assert data["site"]["source"] == "time.sleep(0.3)  # the block"
    (root / "app/handlers.py").write_text("changed since\n")
    back = BlockEvent.from_json(data)  # no root: the names as the report has them
    assert back.site.filename == "app/handlers.py"
    assert back.site.source == "time.sleep(0.3)  # the block"


def test_an_entry_of_an_older_report_reads_with_defaults():
    old = {
        "test": "t.py::t", "phase": "call", "start_ms": None, "duration_ms": 300.0,
        "threshold_ms": 100.0, "severity": "MEDIUM", "outcome": "failed", "reason": None,
        "mode": "fail", "site": {"file": "app/x.py", "line": 3, "function": "f", "source": ""},
        "operation": None, "stack": [], "thread": "MainThread", "task": None,
        "loop": "asyncio", "gil": "loop", "gil_holder": None, "syscall": None, "starved": False,
        "several_calls": False, "captured_after_ms": 100.5, "late": False, "cause": None,
        "hint": None, "cpu_wait_ms": None, "callbacks": [],
    }  # fmt: skip
    v = Verdict.from_json(old)
    assert (v.event.duration, v.event.phase, v.event.gc_time, v.event.native_stack) == (
        0.3,
        "call",
        0.0,
        [],
    )
    assert v.key == ("app/x.py", "f") and v.over_threshold  # from the outcome
    assert v.event.site.source == ""  # recorded as unreadable: not read from here
    assert v.event.fix is None  # written before blocks had a fix


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"duration_ms": None}, "expected 'duration_ms' of type number, found nothing"),
        ({"outcome": "exploded"}, "unknown outcome 'exploded'; expected one of failed, "),
        ({"starved": "yes"}, "expected 'starved' of type boolean, found str"),
        ({"stack": [{"file": "a.py"}]}, "stack[0]: expected a frame {file, line, function}"),
        ({"native_stack": [{"function": "f"}]}, "native_stack[0]: expected 'library'"),
        (
            {"callbacks": [{"first_ms": 0, "last_ms": 1, "min_ms": 1, "samples": 1}]},
            "callbacks[0]: expected 'max_ms' of type number, found nothing",
        ),
        ({"gil_holder": {"thread": "t", "stack": 3}}, "gil_holder: expected 'stack' of type"),
        ({"samples": [{"offset_ms": 1}]}, "samples[0]: expected 'count' of type integer"),
    ],
)
def test_what_is_wrong_is_named(root, change, message):
    ev = full_event(root)
    v = Verdict(
        event=ev, test=ev.test, phase="call", threshold=0.1, severity="MEDIUM",
        outcome="failed", reason=None, mode="fail", key=None,
    )  # fmt: skip
    data = {**v.to_json(root), **change}
    with pytest.raises(FormatError) as exc:
        Verdict.from_json(data, root)
    assert message in str(exc.value)


def test_the_request_a_block_served_travels_with_it_and_is_shown(root):
    ev = full_event(root)
    data = json.loads(json.dumps(ev.to_json(root)))
    assert data["context"] == {"request": "POST /upload", "vars": {"request_id": "r-1"}}
    assert "context" not in dataclasses.replace(ev, request=None).to_json(root)
    # The report read back (summary, html) shows it as the live report did.
    back = BlockEvent.from_json(data, root)
    assert format_event(back) == format_event(ev)
    assert format_event(back)[-1] == "  request POST /upload (request_id='r-1')"


def test_docs_events_md_names_every_key_of_the_json(root):
    ev = full_event(root)
    v = Verdict(
        event=ev, test=ev.test, phase="call", threshold=0.1, severity="MEDIUM",
        outcome="failed", reason=None, mode="fail", key=None, start_ms=1.0,
    )  # fmt: skip
    data = v.to_json(root, samples=True, clock=1)
    keys = set(data) | set(data["samples"][0]) | set(data["callbacks"][0])
    keys |= set(data["gil_holder"]) | set(data["native_stack"][0]) | set(data["site"])
    keys |= {"trace_id", "span_id"} | set(data["context"])  # as _asgi.context_of() writes it
    docs = Path(__file__).resolve().parents[2] / "docs" / "events.md"
    quoted = " ".join(re.findall(r"`([^`]+)`", docs.read_text(encoding="utf-8")))
    assert sorted(k for k in keys if not re.search(rf"\b{k}\b", quoted)) == []
