"""From the watchdog's JSON to an analysed event in one step: units, context, the call-site
choice, starvation and debugger pauses (in-process, no watchdog)."""

import bdb
import json
import threading

from loopguard import Frame
from loopguard._decode import decode_events, make_context, site_of

TEST = "tests/test_upload.py::test_upload"
RUNNER = {"filename": "/proj/tests/test_upload.py", "lineno": 12, "function": "test_upload"}
HANDLER = {"filename": "/proj/app/handlers.py", "lineno": 30, "function": "handle"}
LIBRARY = {"filename": json.__file__, "lineno": 1, "function": "dumps"}


def raw_sample(*frames, count=1, gil="loop", holder=None, callback=None, late=False):
    return {
        "offset_ns": 100_000_000, "count": count, "frames": list(frames), "gil": gil,
        "holder": holder, "late": late, "error": None, "task_name": "Task-3",
        "syscall": None, "running": True, "callback": callback,
    }  # fmt: skip


CALL = make_context(TEST, "call")


def raw_event(samples, *, context=CALL, callbacks=()):
    return {
        "id": 7, "loop_id": 1, "loop_kind": "asyncio", "thread_ident": 1,
        "thread_name": "MainThread", "context": context, "start_ns": 1_000_000_000,
        "end_ns": 1_312_000_000, "duration_ns": 312_000_000, "threshold_ns": 100_000_000,
        "starved": False, "captured_after_ns": 101_000_000, "end_exact": True,
        "task_name": "Task-3", "cpu_wait_ns": 2_000_000, "callbacks": list(callbacks),
        "samples": samples,
    }  # fmt: skip


def decode(*events):
    return decode_events(json.dumps(list(events)))


def test_units_and_context_are_decoded():
    (ev,) = decode(raw_event([raw_sample(RUNNER, HANDLER)]))
    assert (ev.duration, ev.threshold, ev.captured_after, ev.cpu_wait) == (0.312, 0.1, 0.101, 0.002)
    assert (ev.test, ev.phase, ev.start_ns, ev.end_ns) == (
        TEST,
        "call",
        1_000_000_000,
        1_312_000_000,
    )
    assert ev.samples[0].offset == 0.1
    (outside,) = decode(raw_event([], context=""))
    assert (outside.test, outside.phase, outside.site) == (None, None, None)


def test_a_starved_blocks_holder_wait_is_decoded_and_explained():
    raw = raw_event([raw_sample(RUNNER, gil="other", holder={"thread_ident": 5, "frames": []})])
    (plain,) = decode(raw)
    assert plain.holder_cpu_wait is None
    raw.update(starved=True, cpu_wait_ns=1_000_000, holder_cpu_wait_ns=250_000_000)
    (ev,) = decode(raw)
    assert (ev.cpu_wait, ev.holder_cpu_wait) == (0.001, 0.25)
    assert ev.cause == "cpu-wait"
    assert ev.hint == (
        "the GIL holder waited 250 ms for a CPU while it held the GIL, not running its code: "
        "the machine was overloaded"
    )


def test_the_site_is_the_innermost_project_frame_and_the_library_frame_is_named():
    (ev,) = decode(raw_event([raw_sample(RUNNER, HANDLER, LIBRARY)]))
    assert ev.site == Frame(**HANDLER)
    assert ev.innermost == Frame(**LIBRARY)
    assert ev.stack == [Frame(**RUNNER), Frame(**HANDLER), Frame(**LIBRARY)]
    assert (ev.gil, ev.running, ev.late, ev.starved) == ("loop", True, False, False)


def test_a_stack_without_project_frames_is_blamed_on_its_innermost_frame():
    assert site_of([Frame(**LIBRARY)]) == Frame(**LIBRARY)
    assert site_of([]) is None


CUT = {
    "filename": "<loopguard>",
    "lineno": 0,
    "function": "<outer frames not read: a generator yielded while its stack was read>",
}


def test_stacks_the_reader_marked_as_cut_do_not_choose_the_site():
    # Three reads ended at a library generator (no project frame), two were whole.
    cut = [raw_sample(CUT, LIBRARY) for _ in range(3)]
    whole = [raw_sample(RUNNER, HANDLER, LIBRARY) for _ in range(2)]
    (ev,) = decode(raw_event(cut + whole))
    assert ev.site == Frame(**HANDLER)
    assert ev.stack[0] == Frame(**RUNNER)
    # With nothing whole, the cut stacks are all there is to show.
    (ev,) = decode(raw_event(cut))
    assert ev.site == Frame(**LIBRARY)


def test_a_sample_taken_while_another_thread_held_the_gil_blames_that_thread():
    worker = threading.Thread(target=lambda: None, name="cruncher")
    worker.start()
    worker.join()
    holder = {"thread_ident": worker.ident, "frames": [HANDLER]}
    sample = raw_sample(RUNNER, LIBRARY, gil="other", holder=holder, late=True)
    (ev,) = decode(raw_event([sample]))
    assert ev.starved
    assert ev.site == Frame(**HANDLER)
    assert ev.gil_holder_stack == [Frame(**HANDLER)]
    assert ev.gil_holder_thread in ("cruncher", f"thread {worker.ident:#x}")
    assert ev.late


def test_a_block_of_several_callbacks_is_shown_at_the_one_that_surely_lasted_longest():
    short = {**HANDLER, "lineno": 31, "function": "tick"}
    spans = [
        {"first_ns": 0, "last_ns": 0, "min_ns": 0, "max_ns": 20_000_000, "samples": 3,
         "in_callback": True},
        {"first_ns": 30_000_000, "last_ns": 190_000_000, "min_ns": 160_000_000,
         "max_ns": 200_000_000, "samples": 2, "in_callback": True},
    ]  # fmt: skip
    samples = [
        raw_sample(RUNNER, short, count=3, callback=0),
        raw_sample(RUNNER, HANDLER, callback=1),
    ]
    (ev,) = decode(raw_event(samples, callbacks=spans))
    assert ev.site == Frame(**HANDLER)  # not the line most samples show
    assert [c.site for c in ev.callbacks] == [Frame(**short), Frame(**HANDLER)]
    assert ev.callbacks[1].min == 0.16


def test_a_loop_thread_paused_in_a_debugger_is_not_a_block():
    pause = {"filename": bdb.__file__, "lineno": 90, "function": "dispatch_line"}
    assert decode(raw_event([raw_sample(RUNNER, HANDLER, pause)])) == []
    assert len(decode(raw_event([raw_sample(RUNNER, HANDLER)]))) == 1


def test_what_a_call_waited_on_comes_from_the_samples_that_name_it():
    # Samples taken before the block reached the threshold do not name the call's object; the
    # event takes it from a later sample of the same call at the same place.
    early = {**raw_sample(RUNNER, HANDLER), "syscall": "recvfrom", "running": False}
    named = {**early, "syscall_object": "TCP 127.0.0.1:51234 → 127.0.0.1:8080", "count": 3}
    (ev,) = decode(raw_event([early, named]))
    assert (ev.syscall, ev.syscall_object) == ("recvfrom", "TCP 127.0.0.1:51234 → 127.0.0.1:8080")
    assert ev.samples[1].syscall_object == named["syscall_object"]
    # Another call's object is not borrowed.
    other = {**named, "syscall": "read", "syscall_object": "/tmp/x"}
    (ev,) = decode(raw_event([early, other]))
    assert (ev.syscall, ev.syscall_object) == ("recvfrom", None)


def test_an_early_sample_on_its_way_to_the_call_shows_the_call_it_then_waits_in():
    # Before the threshold (30 ms in) the thread ran towards its poll; from 100 ms on it waited.
    early = {**raw_sample(RUNNER, HANDLER), "offset_ns": 30_000_000}
    waiting = {**raw_sample(RUNNER, HANDLER), "syscall": "poll", "running": False, "count": 3}
    (ev,) = decode(raw_event([early, waiting]))
    assert (ev.syscall, ev.running) == ("poll", False)
    # An unnamed system call (the allocator's) is not what a block waits in; a sample taken
    # from the threshold on shows what it shows.
    alloc = {**waiting, "syscall": "system call 12", "running": True}
    (ev,) = decode(raw_event([early, alloc]))
    assert (ev.syscall, ev.running) == (None, True)
    (ev,) = decode(raw_event([{**early, "offset_ns": 100_000_000}, waiting]))
    assert ev.syscall is None
    # Nor is a wait for the GIL: another thread held it, or it was being handed over (nobody
    # held it for an instant: code that holds the GIL, made to let go of it).
    gil_wait = {**waiting, "syscall": "futex", "gil": "other", "holder": {"thread_ident": 5}}
    (ev,) = decode(raw_event([early, gil_wait]))
    assert (ev.syscall, ev.running, ev.starved) == (None, True, False)
    hand_over = {**waiting, "syscall": "futex", "gil": "released"}
    (ev,) = decode(raw_event([early, hand_over]))
    assert (ev.syscall, ev.running, ev.gil) == (None, True, "loop")


def test_samples_that_find_loopguards_own_thread_holding_the_gil_are_left_out(monkeypatch):
    # loopguard's assistant takes the GIL to name the blocked loop's task; a loaded machine
    # can take it off its CPU meanwhile, and a loop running Python code then waits for it.
    from loopguard import _native

    monkeypatch.setattr(_native, "assistant_ident", lambda: 0xA55)
    spinning = {**raw_sample(RUNNER, HANDLER), "offset_ns": 30_000_000}
    waiting = {
        **raw_sample(RUNNER, HANDLER, gil="other", holder={"thread_ident": 0xA55, "frames": []}),
        "syscall": "futex",
        "running": False,
        "count": 3,
    }
    (ev,) = decode(raw_event([spinning, waiting]))
    assert (ev.gil, ev.syscall, ev.running, ev.starved) == ("loop", None, True, False)
    assert ev.site == Frame(**HANDLER)
    # Another thread holding the GIL is starvation, as before.
    other = {**waiting, "holder": {"thread_ident": 0xB0B, "frames": [LIBRARY]}}
    (ev,) = decode(raw_event([{**other, "offset_ns": 100_000_000}]))
    assert ev.starved and ev.gil == "other"
    # When every sample found loopguard's thread holding it, they are what there is; it is
    # named for what it is.
    (ev,) = decode(raw_event([waiting]))
    assert ev.starved and ev.gil_holder_thread == "loopguard-assistant"


def test_the_blocking_native_function_is_a_librarys_own_not_the_c_runtimes():
    from loopguard._events import NativeFrame, blocking_native

    def nf(function, library):
        return NativeFrame(function, library, 0x10)

    # Sampled while sqlite3 was inside a libc lock: sqlite3's function names the call.
    stack = [
        nf("lll_mutex_unlock_optimized", "libc.so.6"),
        nf(None, "libsqlite3.so.0"),
        nf("sqlite3VdbeMemGrow", "libsqlite3.so.0"),
        nf("sqlite3_step", "libsqlite3.so.0"),
    ]
    assert blocking_native(stack).function == "sqlite3VdbeMemGrow"
    # Only the C runtime below the Python frame: its function is the call (a sleep, a recv).
    assert blocking_native([nf("clock_nanosleep", "libc.so.6")]).function == "clock_nanosleep"
    # No name at all: the innermost frame.
    assert blocking_native([nf(None, "libfoo.so")]).library == "libfoo.so"
