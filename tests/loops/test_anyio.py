"""anyio's pytest plugin on both backends: a blocking test fails once per backend."""

import pytest

pytestmark = pytest.mark.single_version

pytest.importorskip("anyio")
pytest.importorskip("trio")

HEADER = """
import time
import anyio, pytest

@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request):
    return request.param

async def blocker():
    await anyio.sleep(0.01)
    time.sleep(0.4)  # the blocking line
"""


INNER = dict(header=HEADER, plugins=("anyio",))


def test_blocking_test_fails_once_per_backend_naming_it(inner):
    result = inner.run(
        """
@pytest.mark.anyio
async def test_blocks():
    await blocker()

@pytest.mark.anyio
async def test_fine():
    await anyio.sleep(0.3)
    await anyio.to_thread.run_sync(time.sleep, 0.3)
""",
    )
    result.assert_outcomes(failed=2, passed=2)
    site = inner.site("# the blocking line", "blocker")
    out = result.stdout.str()
    # Each failure's report names its backend in the detail line.
    for backend, kind in (("asyncio", "asyncio loop"), ("trio", "trio run")):
        section = out.split(f"_ test_blocks[{backend}] _", 1)[1].split("\n_", 1)[0]
        assert f"loop thread 'MainThread', {kind}" in section, section
        assert f"test_it.py:{inner.line('# the blocking line')} in blocker" in section
    result.stdout.fnmatch_lines([site, "*", site], consecutive=False)
    assert out.count("FAILED test_it.py::test_blocks[") == 2
    result.stdout.fnmatch_lines(
        [
            "FAILED test_it.py::test_blocks[[]asyncio[]] - loopguard: * at *",
            "FAILED test_it.py::test_blocks[[]trio[]] - loopguard: * at *",
        ]
    )


def test_blocking_async_fixture_fails_setup_on_both_backends(inner):
    result = inner.run(
        """
@pytest.fixture
async def resource():
    await blocker()
    yield 1

@pytest.mark.anyio
async def test_uses_it(resource):
    assert resource == 1
""",
    )
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines(
        [
            "ERROR test_it.py::test_uses_it[[]asyncio[]] - loopguard: * at *",
            "ERROR test_it.py::test_uses_it[[]trio[]] - loopguard: * at *",
        ]
    )
    result.stdout.fnmatch_lines(["*loop thread 'MainThread', trio run*"])


def test_trio_guest_run_on_an_asyncio_host_is_reported_once(inner):
    result = inner.run(
        """
import asyncio, trio

def test_guest():
    async def host():
        done = asyncio.Event()
        loop = asyncio.get_running_loop()
        trio.lowlevel.start_guest_run(
            blocker,
            run_sync_soon_threadsafe=loop.call_soon_threadsafe,
            done_callback=lambda outcome: done.set(),
        )
        await done.wait()
    asyncio.run(host())
""",
    )
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    assert out.count("loopguard: event loop blocked") == 1  # the report's first line
    assert out.count(" - loopguard: ") == 1  # its summary line
    assert "block 1 of 2" not in out
    result.stdout.fnmatch_lines(
        [
            inner.site("# the blocking line", "blocker"),
            "*loop thread 'MainThread', asyncio loop*",
        ]
    )


def test_trio_run_suspended_between_tests_is_not_blocked(inner):
    # anyio drives its trio run only while a test or fixture runs; a module-scoped fixture's
    # task that wakes up every 20 ms waits, without being blocked, while pytest does other work.
    result = inner.run(
        """
import time
import anyio, pytest

pytestmark = pytest.mark.anyio

@pytest.fixture(scope="module")
def anyio_backend():
    return "trio"

@pytest.fixture(scope="module")
async def ticker(anyio_backend):
    async with anyio.create_task_group() as tg:
        async def tick():
            while True:
                await anyio.sleep(0.02)
        tg.start_soon(tick)
        yield
        tg.cancel_scope.cancel()

async def test_one(ticker):
    await anyio.sleep(0.1)

def test_sync_in_between():
    time.sleep(0.4)

async def test_two(ticker):
    await anyio.sleep(0.1)

def test_no_event_was_recorded():
    from loopguard._runtime import runtime
    runtime.collect()
    assert runtime.take_events(lambda e: True) == []
""",
        "-p",
        "no:randomly",
    )
    result.assert_outcomes(passed=4)
