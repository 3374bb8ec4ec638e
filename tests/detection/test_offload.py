"""``offload_check()``: which threads ran inside, their GIL share, and ``assert_offloaded()``."""

import re

import pytest

pytestmark = pytest.mark.single_version

# offload_check() samples threads with the GIL reader, which the portable path does not have.
pytestmark = pytest.mark.linux_full

HEADER = """
import asyncio, concurrent.futures, hashlib, threading, time
import pytest
import loopguard
from loopguard import OffloadError


def spin(seconds):
    # Pure Python for `seconds` of the thread's own CPU time: holds the GIL throughout.
    end = time.thread_time() + seconds
    n = 0
    while time.thread_time() < end: n += 1  # the spinning line
    return n
"""


INNER = dict(header=HEADER)


def test_pure_python_in_to_thread_fails_naming_the_workers_line_and_share(inner):
    result = inner.run(
        """
@pytest.mark.asyncio
async def test_offloaded(loopguard):
    async with loopguard.offload_check() as check:
        await asyncio.to_thread(spin, 0.4)
    worker = [t for t in check.threads if t.role == "worker"]
    assert len(worker) == 1 and worker[0].gil_share > 0.8, check.report()
    assert worker[0].name.startswith("asyncio_")
    check.assert_offloaded()
""",
    )
    result.assert_outcomes(failed=1)
    n = inner.line("the spinning line")
    result.stdout.fnmatch_lines(
        [
            "*OffloadError: loopguard: offloaded work held the GIL inside offload_check() "
            "(max_gil_share 50%)",
            f"*worker 'asyncio_*' held the GIL *% of its * at test_it.py:{n} in spin",
            "*>     while time.thread_time() < end: n += 1  # the spinning line",
            "*a thread does not take this work off the loop's CPU; use a process pool, slice the "
            "work, or a library call that releases the GIL",
            "*threads inside the check (*GIL readings):",
            f"*worker 'asyncio_*': busy *, GIL *%, started inside at test_it.py:{n} in spin",
        ]
    )
    assert "event loop blocked" not in result.stdout.str()


def test_work_that_releases_the_gil_passes(inner):
    pytest.importorskip("PIL")
    result = inner.run(
        """
from PIL import Image

DATA = bytes(200 * 1024 * 1024)


def resize():
    img = Image.new("RGB", (4000, 3000), "white")
    for _ in range(3):
        img.resize((3900, 2900), Image.LANCZOS)


def hash_it():
    return hashlib.sha256(DATA).hexdigest()


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "work, cpu_heavy",
    [(lambda: time.sleep(0.3), False), (hash_it, True), (resize, True)],
    ids=["sleep", "hashlib", "pillow"],
)
async def test_offloaded(loopguard, work, cpu_heavy):
    async with loopguard.offload_check() as check:
        await asyncio.to_thread(work)
    check.assert_offloaded()
    worker = [t for t in check.threads if t.role == "worker"]
    print("\\nFIGURES", [(t.name, round(t.busy, 3), round(t.gil_share, 3)) for t in worker])
    if cpu_heavy:  # the work was seen, not missed
        assert worker and worker[0].busy > 0.02 and worker[0].gil_share < 0.3, check.report()
""",
        "-s",
    )
    result.assert_outcomes(passed=3)


def test_a_block_on_the_loop_inside_the_check_fails_as_a_block(inner):
    result = inner.run(
        """
@pytest.mark.asyncio
async def test_blocks(loopguard):
    with loopguard.offload_check() as check:
        await asyncio.sleep(0)
        time.sleep(0.4)  # blocks the loop
        await asyncio.sleep(0)
    assert len(check.events) == 1, check.report()
    try:
        check.assert_offloaded()
    except OffloadError as e:
        print("REPORT\\n" + str(e))
    else:
        raise AssertionError("assert_offloaded() passed")
""",
        "-s",
        "--loopguard-mode=warn",
    )
    result.assert_outcomes(passed=1)
    n = inner.line("blocks the loop")
    result.stdout.fnmatch_lines(
        [
            "*REPORT",
            "loopguard: event loop blocked for * ms (threshold 100 ms)",
            f"*test_it.py:{n}*",
        ]
    )


def test_nested_checks_each_see_their_own_threads(inner):
    result = inner.run(
        """
@pytest.mark.asyncio
async def test_nested(loopguard):
    async with loopguard.offload_check() as outer:
        await asyncio.to_thread(time.sleep, 0.2)
        async with loopguard.offload_check() as inner:
            await asyncio.to_thread(spin, 0.3)
        await asyncio.to_thread(time.sleep, 0.1)
    assert [t.site.function for t in inner.offenders()] == ["spin"], inner.report()
    assert [t.site.function for t in outer.offenders()] == ["spin"], outer.report()
    assert outer.duration > inner.duration + 0.25
    with pytest.raises(OffloadError):
        inner.assert_offloaded()
    inner.assert_offloaded(max_gil_share=1.0)
""",
    )
    result.assert_outcomes(passed=1)


def test_works_without_the_plugin_as_sync_and_async_context_manager(inner):
    result = inner.run(
        """
def test_sync():
    with loopguard.offload_check() as check:
        with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="pool") as ex:
            ex.submit(spin, 0.3).result()
    [bad] = check.offenders()
    assert bad.name.startswith("pool") and bad.gil_share > 0.8, check.report()
    assert [t.role for t in check.threads if t.ident == threading.get_ident()] in ([], ["caller"])


def test_async():
    async def main():
        async with loopguard.offload_check() as check:
            await asyncio.to_thread(spin, 0.3)
        return check

    check = asyncio.run(main())
    assert [t.site.function for t in check.offenders()] == ["spin"], check.report()


def test_sync_around_asyncio_run():
    async def main():
        await asyncio.to_thread(time.sleep, 0.2)
        time.sleep(0.2)  # blocks the loop
        await asyncio.sleep(0)

    with loopguard.offload_check("50ms") as check:
        asyncio.run(main())
    assert not check.offenders()
    assert [round(e.duration, 1) for e in check.events] == [0.2]
    with pytest.raises(OffloadError, match="event loop blocked"):
        check.assert_offloaded()
""",
        plugin=False,
    )
    result.assert_outcomes(passed=3)


def test_a_thread_that_starts_and_ends_inside_is_listed(inner):
    result = inner.run(
        """
def test_short_lived(loopguard):
    with loopguard.offload_check() as check:
        t = threading.Thread(target=spin, args=(0.15,), name="short-lived")
        t.start()
        t.join()
        time.sleep(0.05)
    [short] = [t for t in check.threads if t.name == "short-lived"]
    assert short.started_inside and short.site.function == "spin", check.report()
    assert short.busy > 0.1 and short.gil_share > 0.8, check.report()
""",
    )
    result.assert_outcomes(passed=1)


def test_a_thread_that_starts_threads_is_listed_once(inner):
    # A new thread's state is made by the thread that starts it and, before 3.12, carries the
    # starter's ids until the new thread runs: the sampler must not list the starter twice.
    result = inner.run(
        """
def test_many_starts():
    with loopguard.offload_check() as check:
        for _ in range(300):
            t = threading.Thread(target=time.sleep, args=(0.001,))
            t.start()
            t.join()
    me = [t.role for t in check.threads if t.ident == threading.get_ident()]
    assert me in ([], ["caller"]), check.report()
""",
        plugin=False,
    )
    result.assert_outcomes(passed=1)


def test_bad_input_names_the_value_and_what_was_expected(inner):
    result = inner.run(
        """
def test_bad(loopguard):
    expected = (
        r"invalid value for threshold: 'soon' "
        r"\\(from loopguard.offload_check\\(\\)\\); expected"
    )
    with pytest.raises(ValueError, match=expected):
        loopguard.offload_check("soon")
    with pytest.raises(ValueError, match=r"invalid value for min_busy: -1"):
        loopguard.offload_check(min_busy=-1)
    check = loopguard.offload_check()
    with pytest.raises(RuntimeError, match="after the with block"):
        check.assert_offloaded()
    with check:
        pass
    for share in (1.5, -0.1, "half", True):
        expected = r"invalid value for max_gil_share: .* expected a number between 0 and 1"
        with pytest.raises(ValueError, match=expected):
            check.assert_offloaded(max_gil_share=share)
    with pytest.raises(RuntimeError, match="already closed"):
        with check:
            pass
""",
    )
    result.assert_outcomes(passed=1)


def test_nothing_is_sampled_outside_a_check():
    import threading

    import loopguard

    before = {t.native_id for t in threading.enumerate()}
    with loopguard.offload_check() as check:
        pass
    assert check.readings >= 1
    assert {t.native_id for t in threading.enumerate()} == before
    import os

    tasks = os.listdir("/proc/self/task")
    names = [open(f"/proc/self/task/{t}/comm").read().strip() for t in tasks]
    assert "loopguard-offlo" not in names


# --- the loop the check runs in: watched whoever started it and whatever the marker says ---

BLOCKED = re.compile(
    r"OffloadError: loopguard: event loop blocked for ([\d.]+) (ms|s) \(threshold 100 ms\)"
)


def blocked_ms(out):
    """The durations (ms) of the loop blocks that failed ``assert_offloaded()`` in ``out``."""
    return [float(n) * (1 if unit == "ms" else 1000) for n, unit in BLOCKED.findall(out)]


def assert_blocks_named(inner, result, markers, function="*main"):  # 3.10: no qualname
    """Each test failed with an OffloadError for one block of the loop, at least 250 ms long
    (the work lasted 300 ms or more), naming the line marked by each of ``markers``."""
    result.assert_outcomes(failed=len(markers))
    out = result.stdout.str()
    durations = blocked_ms(out)
    assert len(durations) == len(markers) and min(durations) >= 250, out
    for marker in markers:
        result.stdout.fnmatch_lines([inner.site(marker, function)])
    assert "held the GIL inside offload_check()" not in out


def test_without_the_plugin_a_block_of_the_running_loop_fails(inner):
    # The loop started before anything watched loops: the check watches it from its start.
    result = inner.run(
        """
def test_async_with():
    async def main():
        async with loopguard.offload_check() as check:
            time.sleep(0.3)  # sleeps on the loop, async with
        check.assert_offloaded()

    asyncio.run(main())


def test_with_inside_a_coroutine():
    async def main():
        with loopguard.offload_check() as check:
            await asyncio.sleep(0)
            time.sleep(0.3)  # sleeps on the loop, with
        check.assert_offloaded()

    asyncio.run(main())
""",
        "-p",
        "no:loopguard",
        plugin=False,
    )
    assert_blocks_named(
        inner, result, ["sleeps on the loop, async with", "sleeps on the loop, with"]
    )


def test_without_the_plugin_cpu_bound_work_on_the_loop_fails(inner):
    # json.dumps holds the GIL throughout: the rows are sized on this machine to take at least
    # 400 ms of CPU, however fast it is.
    result = inner.run(
        """
import json


def rows_for(cpu_seconds):
    rows = [{"id": i, "name": "x" * 20, "tags": list(range(10))} for i in range(5000)]
    while True:
        start = time.thread_time()
        json.dumps(rows)
        took = time.thread_time() - start
        if took >= cpu_seconds:
            return rows
        rows = rows * max(2, int(cpu_seconds / max(took, 1e-3) * 1.2))


def test_dumps():
    rows = rows_for(0.4)

    async def main():
        async with loopguard.offload_check() as check:
            await asyncio.sleep(0)
            json.dumps(rows)  # serializes on the loop
        check.assert_offloaded()

    asyncio.run(main())
""",
        plugin=False,
    )
    assert_blocks_named(inner, result, ["serializes on the loop"])


def test_without_the_plugin_offloaded_work_passes(inner):
    result = inner.run(
        """
def test_async_with():
    async def main():
        await asyncio.to_thread(int)  # the worker thread is started before the check
        async with loopguard.offload_check() as check:
            await asyncio.to_thread(time.sleep, 0.3)
        check.assert_offloaded()
        assert check.events == [] and check.duration >= 0.3

    asyncio.run(main())


def test_with_inside_a_coroutine():
    async def main():
        await asyncio.to_thread(int)
        with loopguard.offload_check() as check:
            await asyncio.to_thread(time.sleep, 0.3)
        check.assert_offloaded()
        assert check.events == []

    asyncio.run(main())
""",
        plugin=False,
    )
    result.assert_outcomes(passed=2)


def test_in_a_test_the_plugin_does_not_guard_a_block_fails_the_check(inner):
    result = inner.run(
        """
@pytest.mark.asyncio
@pytest.mark.loopguard(enabled=False)
async def test_async_with():
    async with loopguard.offload_check() as check:
        time.sleep(0.3)  # sleeps on the loop, async with
    check.assert_offloaded()


@pytest.mark.asyncio
@pytest.mark.loopguard(enabled=False)
async def test_with():
    with loopguard.offload_check() as check:
        time.sleep(0.3)  # sleeps on the loop, with
        await asyncio.sleep(0)
    check.assert_offloaded()


@pytest.mark.asyncio
@pytest.mark.loopguard(enabled=False)
async def test_offloaded():
    await asyncio.to_thread(int)  # the worker thread is started before the check
    async with loopguard.offload_check() as check:
        await asyncio.to_thread(time.sleep, 0.3)
    check.assert_offloaded()
""",
    )
    result.assert_outcomes(failed=2, passed=1)
    out = result.stdout.str()
    durations = blocked_ms(out)
    assert len(durations) == 2 and min(durations) >= 250, out
    for marker in ("sleeps on the loop, async with", "sleeps on the loop, with"):
        result.stdout.fnmatch_lines([inner.site(marker, "test_*")])
    # The plugin itself still ignores the disabled tests' blocks.
    assert "blocking hotspots" not in out


def test_in_a_guarded_test_the_block_is_counted_once(inner):
    # The plugin watches the loop from its start: the check adds no watch of its own, and the
    # plugin's verdict on the test is what it would be without the check.
    result = inner.run(
        """
@pytest.mark.asyncio
async def test_blocks(loopguard):
    async with loopguard.offload_check() as check:
        time.sleep(0.3)  # sleeps on the loop
    assert len(check.events) == 1, check.report()
    with pytest.raises(OffloadError):
        check.assert_offloaded()
""",
        "--loopguard-mode=warn",
    )
    result.assert_outcomes(passed=1)  # older pytest-asyncio versions add a warning of theirs
    result.stdout.fnmatch_lines(["*LoopBlockedWarning*", "*1 block at 1 call site in 1 test*"])
    result.stdout.fnmatch_lines([inner.site("sleeps on the loop", "test_blocks")])


@pytest.mark.parametrize("kind", ["uvloop", "trio"])
def test_without_the_plugin_other_loops_are_watched_too(inner, kind):
    pytest.importorskip(kind)
    run = {"uvloop": "uvloop.run(main())", "trio": "trio.run(main)"}[kind]
    pause = {"uvloop": "asyncio.sleep(0)", "trio": "trio.sleep(0)"}[kind]
    offload = {"uvloop": "asyncio.to_thread", "trio": "trio.to_thread.run_sync"}[kind]
    result = inner.run(
        f"""
import {kind}


def test_async_with():
    async def main():
        async with loopguard.offload_check() as check:
            await {pause}
            time.sleep(0.3)  # sleeps on the loop, async with
        check.assert_offloaded()

    {run}


def test_offloaded():
    async def main():
        await {offload}(int)  # the worker thread is started before the check
        async with loopguard.offload_check() as check:
            await {offload}(time.sleep, 0.3)
        check.assert_offloaded()

    {run}
""",
        plugin=False,
    )
    result.assert_outcomes(failed=1, passed=1)
    out = result.stdout.str()
    durations = blocked_ms(out)
    # uvloop's beat dates a block from the beat it missed: up to a tenth of the threshold late.
    assert len(durations) == 1 and durations[0] >= 250, out
    result.stdout.fnmatch_lines([inner.site("sleeps on the loop, async with", "*main")])
