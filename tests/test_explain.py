"""Blocks spent importing or in garbage collection are labelled, with a hint."""

from conftest import INI

HEADER = """
import asyncio, gc, sys, time
import pytest
"""


def run(pytester, source, *args, **files):
    pytester.makeini(INI)
    pytester.makepyfile(test_it=HEADER + source, **files)
    return pytester.runpytest_subprocess("-p", "loopguard", *args)


def test_a_first_import_in_a_coroutine_is_labelled(pytester):
    result = run(
        pytester,
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


def test_garbage_collection_is_labelled(pytester):
    result = run(
        pytester,
        """
class Node:
    def __init__(self):
        self.me = self

junk = []

@pytest.mark.asyncio
async def test_gc():
    gc.disable()
    junk.extend(Node() for _ in range(1_500_000))
    junk.clear()
    await asyncio.sleep(0)
    t = time.monotonic()
    gc.collect()
    took = time.monotonic() - t
    gc.enable()
    if took < 0.15:
        pytest.skip(f"this machine collects too fast ({took:.3f} s)")
""",
        "--loopguard-json=r.json",
    )
    if "skipped" in result.stdout.str():
        return
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["    (* ms of the block was garbage collection, not the line shown: *gc.freeze()*"]
    )


def test_ordinary_blocks_get_no_label(pytester):
    result = run(
        pytester,
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
