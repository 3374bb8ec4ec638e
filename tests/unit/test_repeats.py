"""Deep stacks: recursion folded as CPython's traceback folds it, the test's own frames kept in
view, the frames the samplers did not read counted, and stacks written folded in JSON
(in-process, hand-built stacks; no watchdog)."""

import asyncio
import json
import os

import pytest
from loopguard import Frame
from loopguard._decode import decode_events, make_context
from loopguard._events import BlockEvent, FormatError
from loopguard._failure import _stack_lines, format_event
from loopguard._repeats import Repeat, find_repeats, fold_repeats, unfold

PROJECT = "/proj/tests/test_deep.py"
RUNNER = [
    Frame("/usr/lib/python3.11/site-packages/_pytest/python.py", 159, "pytest_pyfunc_call"),
    Frame(os.path.join(os.path.dirname(asyncio.__file__), "base_events.py"), 640, "run_forever"),
    Frame(os.path.join(os.path.dirname(asyncio.__file__), "events.py"), 80, "Handle._run"),
]
STEP = Frame(os.path.join(os.path.dirname(asyncio.__file__), "tasks.py"), 267, "Task.__step")
TEST = Frame(PROJECT, 14, "test_deep")
DIG = Frame(PROJECT, 7, "dig")
SLEEP = Frame(PROJECT, 5, "dig")
A = Frame(PROJECT, 20, "walk_a")
B = Frame(PROJECT, 25, "walk_b")


def recursion(depth, *inner):
    return [*RUNNER, STEP, TEST, *[DIG] * depth, *inner]


def marker(text):
    return Frame("<loopguard>", 0, f"<{text}>")


# --- finding runs ----------------------------------------------------------------------------


def test_a_recursion_is_one_run():
    stack = recursion(3000, SLEEP)
    assert find_repeats(stack) == [(5, 1, 3000)]


def test_mutual_recursion_is_a_run_of_its_cycle():
    stack = [TEST, *[A, B] * 1500, SLEEP]
    assert find_repeats(stack) == [(1, 2, 1500)]
    # A cycle of three with a pair inside it: the cycle covers more frames.
    assert find_repeats(["t", *"aab" * 10]) == [(1, 3, 10)]


def test_the_shortest_block_wins_a_tie_and_runs_do_not_overlap():
    assert find_repeats(list("abababab")) == [(0, 2, 4)]
    assert find_repeats(list("xaaaayzbzbzbw")) == [(1, 1, 4), (6, 2, 3)]
    assert find_repeats(list("abcdefg")) == []
    assert find_repeats([]) == []


def test_folding_is_exact():
    stacks = [recursion(3000, SLEEP), [TEST, *[A, B] * 7, A, SLEEP], list("aabaabaabxyxyq")]
    for stack in stacks:
        runs = find_repeats(stack)
        folded, i = [], 0
        for start, p, times in runs:
            folded.extend(stack[i : start + p])
            i = start + p * times
        folded.extend(stack[i:])
        # ``at`` in the folded stack, as the watchdog sends it.
        shift, at_folded = 0, []
        for start, p, times in runs:
            at_folded.append((start - shift, p, times))
            shift += p * (times - 1)
        assert unfold(folded, at_folded) == stack


def test_runs_become_entries_that_count_their_frames():
    entries = fold_repeats([TEST, *[A, B] * 4, *[DIG] * 5, SLEEP])
    assert entries == [TEST, Repeat((A, B), 4), Repeat((DIG,), 5), SLEEP]
    assert [e.frames for e in entries[1:3]] == [8, 5]
    # Runs shorter than asked for stay as they are.
    assert fold_repeats([TEST, *[DIG] * 5], min_times=6) == [TEST, *[DIG] * 5]


def test_unfold_refuses_malformed_runs():
    with pytest.raises(ValueError, match="malformed repeat"):
        unfold(list("abc"), [(1, 1, 2), (0, 1, 2)])


# --- the report ------------------------------------------------------------------------------


def lines(stack, **kw):
    return [line for line in _stack_lines(stack, **kw) if not line.startswith("      ")]


def frame_line(f):
    return f'    File "{f.filename}", line {f.lineno}, in {f.function}'


def test_a_recursion_prints_as_cpythons_traceback_with_the_tests_frame():
    out = lines(recursion(3000, SLEEP))
    assert out == [
        "    ... 3 outer frames (test runner and event loop) not shown ...",
        f'    File "{STEP.filename}", line 267, in Task.__step',
        frame_line(TEST),
        frame_line(DIG),
        frame_line(DIG),
        frame_line(DIG),
        "    [Previous line repeated 2997 more times]",
        frame_line(SLEEP),
    ]


def test_a_short_repeat_is_printed_whole():
    out = lines(recursion(3, SLEEP))
    assert out.count(frame_line(DIG)) == 3
    assert not any("Previous" in line for line in out)
    out = lines(recursion(4, SLEEP))
    assert "    [Previous line repeated 1 more time]" in out


def test_mutual_recursion_prints_its_cycle_once():
    out = lines([*RUNNER, TEST, *[A, B] * 1500, SLEEP])
    assert out[1:] == [
        frame_line(TEST),
        frame_line(A),
        frame_line(B),
        "    [Previous 2 lines repeated 1499 more times]",
        frame_line(SLEEP),
    ]


def test_the_full_stack_folds_recursion_too():
    out = lines(recursion(3000, SLEEP), full=True)
    assert out[: len(RUNNER)] == [frame_line(f) for f in RUNNER]
    assert "    [Previous line repeated 2997 more times]" in out
    assert len(out) < 20


def test_a_long_stack_keeps_the_tests_frame_and_counts_what_it_hides():
    # 40 distinct project frames under the test: more than the 30 entries shown.
    calls = [Frame(PROJECT, 100 + i, f"step{i}") for i in range(40)]
    out = lines([*RUNNER, TEST, *calls, SLEEP])
    assert out[0] == "    ... 3 outer frames (test runner and event loop) not shown ..."
    assert out[1] == frame_line(TEST)
    assert out[2] == "    ... 12 frames not shown ..."
    assert out[3] == frame_line(calls[12])
    assert out[-1] == frame_line(SLEEP)
    assert len(out) == 3 + 29


def test_frames_not_read_are_said_where_they_were():
    gap = marker("4943 frames not read: loopguard reads the innermost 10000 ...")
    stack = [*RUNNER, STEP, TEST, *[DIG] * 58, gap, *[DIG] * 9999, SLEEP]
    out = lines(stack)
    assert out[2:] == [
        frame_line(TEST),
        *[frame_line(DIG)] * 3,
        "    [Previous line repeated 55 more times]",
        "    ... 4943 frames not read: loopguard reads the innermost 10000 ... ...",
        *[frame_line(DIG)] * 3,
        "    [Previous line repeated 9996 more times]",
        frame_line(SLEEP),
    ]


def test_a_marker_is_not_folded_into_a_library_run():
    lib = [Frame("/venv/lib/python3.11/site-packages/lib/x.py", i, "f") for i in range(4)]
    stack = [TEST, *lib[:2], marker("at least 40001 outer frames not read"), *lib[2:], SLEEP]
    out = lines(stack)
    assert "    ... at least 40001 outer frames not read ..." in out
    assert not any("<loopguard>" in line for line in out)


# --- the watchdog's JSON and the report's ----------------------------------------------------


def raw(f):
    return {"filename": f.filename, "lineno": f.lineno, "function": f.function}


def test_the_watchdogs_folded_samples_are_unfolded():
    sample = {
        "offset_ns": 100_000_000, "count": 3,
        "frames": [raw(f) for f in [*RUNNER, STEP, TEST, DIG, SLEEP]],
        "repeats": [{"at": 5, "frames": 1, "times": 3000}],
        "gil": "released", "holder": None, "late": False, "error": None, "task_name": None,
        "syscall": "clock_nanosleep", "running": False, "callback": None,
    }  # fmt: skip
    event = {
        "id": 1, "loop_id": 1, "loop_kind": "asyncio", "thread_ident": 1,
        "thread_name": "MainThread", "context": make_context("t.py::test_deep", "call"),
        "start_ns": 0, "end_ns": 300_000_000, "duration_ns": 300_000_000,
        "threshold_ns": 100_000_000, "starved": False, "captured_after_ns": 100_000_000,
        "end_exact": True, "task_name": None, "cpu_wait_ns": None, "callbacks": [],
        "samples": [sample],
    }  # fmt: skip
    (ev,) = decode_events(json.dumps([event]))
    assert ev.stack == recursion(3000, SLEEP)
    assert ev.site == SLEEP
    text = "\n".join(format_event(ev))
    assert "[Previous line repeated 2997 more times]" in text
    assert "in test_deep" in text


def deep_event(stack):
    return BlockEvent(
        id=1, duration=0.3, threshold=0.1, thread_name="MainThread", thread_ident=1,
        task_name=None, captured_after=0.1, starved=False, loop_kind="asyncio",
        test="t.py::test_deep", phase="call", stack=stack, site=SLEEP, start_ns=0,
        end_ns=300_000_000, samples=[],
    )  # fmt: skip


def test_the_json_writes_a_run_once_and_reads_it_back_whole():
    stack = [*recursion(3000), *[A, B] * 21, SLEEP]
    d = deep_event(stack).to_json()
    written = d["stack"]
    assert len(written) == len(RUNNER) + 2 + 1 + 2 + 1
    assert written[5] == {
        "file": DIG.filename, "line": 7, "function": "dig",
        "repeat": {"frames": 1, "times": 3000},
    }  # fmt: skip
    assert written[6]["repeat"] == {"frames": 2, "times": 21}
    assert "repeat" not in written[7]
    back = BlockEvent.from_json(json.loads(json.dumps(d)))
    assert back.stack == stack


@pytest.mark.parametrize(
    ("repeat", "message"),
    [
        ({"frames": 0, "times": 3}, r"stack\[1\]: expected 'repeat' as \{frames, times\}"),
        ("3", r"stack\[1\]: expected 'repeat'"),
        ({"frames": 1, "times": True}, r"stack\[1\]: expected 'repeat'"),
        ({"frames": 5, "times": 2}, r"stack\[1\]: its 'repeat' of 5 frames overlaps"),
    ],
)
def test_a_malformed_repeat_is_an_error_naming_it(repeat, message):
    d = deep_event([TEST, DIG, SLEEP]).to_json()
    d["stack"][1]["repeat"] = repeat
    with pytest.raises(FormatError, match=message):
        BlockEvent.from_json(d)
