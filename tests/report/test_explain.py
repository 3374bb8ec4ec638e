"""Blocks spent importing or in garbage collection are labelled, with a hint."""

import pytest

pytestmark = pytest.mark.single_version

HEADER = """
import asyncio, gc, sys, time
import pytest
"""


INNER = dict(header=HEADER)


def test_a_first_import_in_a_coroutine_is_labelled(inner):
    result = inner.run(
        """
@pytest.mark.asyncio
async def test_import():
    import heavy
""",
        heavy="import time\ntime.sleep(0.3)\n",
    )
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*heavy.py:2 in <module>",
            "    (the block was spent importing heavy.py (a first import inside a coroutine): "
            "import it at module level or at start-up)",
            "MEDIUM * failed  *heavy.py:2 in <module>  (importing) time.sleep(0.3)",
        ]
    )


GC_SOURCE = """
class Node:
    def __init__(self):
        self.me = self

@pytest.fixture
def garbage():
    # Made outside the loop: only the collection blocks it.
    gc.disable()
    junk = [Node() for _ in range(1_500_000)]
    junk.clear()
    yield
    gc.enable()

@pytest.mark.asyncio
async def test_gc(garbage):
    await asyncio.sleep(0)
    t = time.monotonic()
    gc.collect()  # the collection
    took = time.monotonic() - t
    print(f"COLLECTED IN {took:.3f}")
"""


def _collected_in(result):
    text = result.stdout.str()
    return float(text.split("COLLECTED IN ")[1].split()[0]) if "COLLECTED IN" in text else None


def test_a_block_that_is_garbage_collection_is_recorded_not_failed(pytester, inner):
    import json

    result = inner.run(GC_SOURCE, "--loopguard-json=r.json", "-s")
    took = _collected_in(result)
    assert took is not None and took > 0.15, f"the collection took {took} s: too quick to test"
    result.assert_outcomes(passed=1)
    [ev] = json.loads((pytester.path / "r.json").read_text())["events"]
    assert ev["outcome"] == "recorded"
    assert ev["reason"].startswith("under the threshold without garbage collection")
    assert ev["cause"] == "gc"
    assert json.loads((pytester.path / "r.json").read_text())["settings"]["gc"] == "exclude"


def test_gc_include_judges_the_whole_block(inner):
    result = inner.run(GC_SOURCE, "--loopguard-gc=include", "-s")
    took = _collected_in(result)
    assert took is not None and took > 0.15, f"the collection took {took} s: too quick to test"
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "loopguard: garbage collection counts toward blocks (from --loopguard-gc)",
            "*  >     gc.collect()  # the collection",
            "    (* ms of the block was garbage collection, called here explicitly)",
        ]
    )


def test_invalid_gc_value_is_a_usage_error(inner):
    result = inner.run("def test_x(): pass\n", "--loopguard-gc=sometimes")
    assert result.ret == 4
    result.stderr.fnmatch_lines(
        [
            "*invalid value for --loopguard-gc: 'sometimes' (from the command line); "
            "expected one of exclude, include*"
        ]
    )


def test_guard_excludes_garbage_collection_unless_asked():
    import asyncio
    import gc

    import loopguard

    class Node:
        def __init__(self):
            self.me = self

    async def main():
        await asyncio.sleep(0)
        gc.collect()

    gc.disable()
    try:
        junk = [Node() for _ in range(1_500_000)]
        del junk
        with loopguard.guard(threshold="50ms") as g:
            asyncio.run(main())
        assert g.events == []
        junk = [Node() for _ in range(1_500_000)]
        del junk
        with pytest.raises(loopguard.LoopBlockedError) as exc:
            with loopguard.guard(threshold="50ms", gc="include"):
                asyncio.run(main())
        assert exc.value.events[0].gc_time > 0.05
    finally:
        gc.enable()
    with pytest.raises(ValueError, match="invalid value for gc: 'never'"):
        loopguard.guard(gc="never")


def test_hint_for_a_collection_started_by_an_allocation():
    from loopguard import BlockEvent, Frame
    from loopguard._explain import _gc_log, explain

    here = Frame(__file__, HINT_LINE, "test_hint_for_a_collection_started_by_an_allocation")
    ev = BlockEvent(
        id=1, duration=0.3, threshold=0.1, thread_name="MainThread", thread_ident=1,
        task_name=None, captured_after=0.1, starved=False, loop_kind="asyncio", test=None,
        phase=None, start_ns=10_000_000_000, end_ns=10_300_000_000, site=here, stack=[here],
    )  # fmt: skip
    _gc_log.append((10_050_000_000, 10_290_000_000))
    try:
        explain(ev)
    finally:
        _gc_log.pop()
    assert ev.cause == "gc"
    assert abs(ev.gc_time - 0.24) < 1e-9
    assert ev.hint.startswith(
        "240 ms of the block was garbage collection, started by an allocation"
    )


HINT_LINE = 1  # the module docstring's line: any line that is not a gc.collect() call


def test_ordinary_blocks_get_no_label(inner):
    result = inner.run(
        """
@pytest.mark.asyncio
async def test_sleep():
    time.sleep(0.3)
""",
    )
    result.assert_outcomes(failed=1)
    assert "importing" not in result.stdout.str()
    assert "garbage collection" not in result.stdout.str()


def test_import_machinery_frames_without_a_module_body():
    from loopguard import Frame
    from loopguard._explain import _imported

    boot = "<frozen importlib._bootstrap>"
    user = Frame("app.py", 3, "handler")
    finding = [
        user,
        Frame(boot, 1, "_find_and_load"),
        Frame("<frozen importlib._bootstrap_external>", 9, "find_spec"),
    ]
    assert _imported(finding) == ""
    body = [user, Frame(boot, 1, "_find_and_load"), Frame("heavy.py", 2, "<module>")]
    assert _imported(body) == "heavy.py"
    assert _imported([user]) is None
