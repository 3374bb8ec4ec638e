"""The lines the GIL-taking sampler (the portable build's, and ``--loopguard-sampler=gil``)
names, checked against CPython's own line table through ``loopguard._native._gil_sampler_line``.

That sampler finds a thread running Python code where it lets another take the GIL: on 3.10 and
3.11 often the jump back to the start of a loop, an instruction with no line."""

from __future__ import annotations

import dis
import sys
import time

import pytest
from loopguard import _native as native

# Line tables differ by version: run under every CPython.
pytestmark = pytest.mark.interpreter


def for_loop(deadline):
    total = 0
    for i in range(100_000_000):
        total += i * i
        if i % 1000 == 0 and time.thread_time() > deadline:
            break
    return total


def while_loop(deadline):
    n = 0
    while True:
        n += 1
        if time.thread_time() > deadline:
            break
    return n


def nested(rows):
    found = []
    for row in rows:
        for cell in row:
            if cell:
                continue
            found.append(cell)
    return found


FUNCTIONS = (for_loop, while_loop, nested)


def lines_by_offset(code):
    return {off: line for start, end, line in code.co_lines() for off in range(start, end, 2)}


def test_an_instruction_with_a_line_is_named_by_it_and_any_other_by_a_line_of_its_function():
    for fn in FUNCTIONS:
        code = fn.__code__
        lines = lines_by_offset(code)
        own = {line for line in lines.values() if line is not None}
        for ins in dis.get_instructions(code):
            named = native._gil_sampler_line(code, ins.offset)
            expected = lines[ins.offset]
            if expected is not None:
                assert named == expected, (fn.__name__, ins.offset, ins.opname)
            else:
                assert named in own, (fn.__name__, ins.offset, ins.opname, named)


def test_the_jump_back_to_a_loops_start_is_named_by_a_line_of_the_loop():
    lineless = 0
    for fn in FUNCTIONS:
        code = fn.__code__
        lines = lines_by_offset(code)
        for ins in dis.get_instructions(code):
            if not isinstance(ins.argval, int) or ins.argval >= ins.offset:
                continue
            if ins.opcode not in getattr(dis, "hasjump", dis.hasjrel + dis.hasjabs):
                continue
            # A backward jump: named by its own line, or when it has none the loop header's.
            expected = lines[ins.offset]
            if expected is None:
                lineless += 1
                expected = lines[ins.argval]
            assert native._gil_sampler_line(code, ins.offset) == expected, (fn.__name__, ins)
    if sys.version_info < (3, 12):
        # The case this guards against exists on these versions (3.12's compiler gives every
        # jump a line).
        assert lineless > 0
