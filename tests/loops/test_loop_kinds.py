"""Every kind of event loop is watched alike: the same cases, run on each kind in KINDS.

Cases that exist for one kind only live beside this module (test_trio.py, test_uvloop.py,
test_anyio.py, test_unusual_loops.py).
"""

import dataclasses

import pytest

pytestmark = pytest.mark.interpreter


@dataclasses.dataclass(frozen=True)
class Kind:
    """One kind of loop, and how a test runs code on it."""

    name: str
    label: str  # how a report names the kind ("loop thread 'MainThread', <label>")
    needs: tuple[str, ...]  # modules without which the kind is skipped
    imports: str  # its modules, imported by the inner test file
    sleep: str  # its sleep function
    offload: str  # an awaitable running time.sleep(0.3) in a worker thread
    marker: str  # the lines before `async def test_...` that make a plugin run it on this kind
    marked_needs: tuple[str, ...] = ()  # and the plugin that does
    plugins: tuple[str, ...] = ()  # the inner sessions' plugins of conftest.SLOW_PLUGINS
    fixtures: str = ""  # module-level fixtures the marked tests need
    marked_args: tuple[str, ...] = ()  # pytest arguments the marked tests need
    running_check: str = "pass"  # a statement, inside the loop, checking it is this kind
    runs: dict[str, str] = dataclasses.field(default_factory=dict)  # sync runners of {main}
    auto_ini: str = ""  # the ini line that runs unmarked async tests on this kind
    more_waiting: str = ""  # statements in an idle coroutine: more ways of waiting idly
    # uvloop calls back from C: the stack is cut at loopguard's wrapper of the loop's run, so
    # neither pytest's frames nor loopguard's own are shown.
    stack_cut_at_run: bool = False

    def header(self):
        return f"""
import asyncio, threading, time
import pytest
{self.imports}
{self.fixtures}
async def blocker():
    await {self.sleep}(0.01)
    time.sleep(0.4)  # the blocking line
"""


def anyio_kind(name, label, backend=None, run=None, needs=(), **more):
    """anyio on one of its backends: its pytest plugin (the ``anyio_backend`` fixture returns
    ``backend``, by default ``"name"``) and, when given, ``run``."""
    return Kind(
        name=f"anyio-{name}",
        label=label,
        needs=("anyio", *needs),
        imports="import anyio",
        sleep="anyio.sleep",
        offload="anyio.to_thread.run_sync(time.sleep, 0.3)",
        marker="@pytest.mark.anyio",
        plugins=("anyio",),
        fixtures=f"""
@pytest.fixture
def anyio_backend():
    return {backend or repr(name)}
""",
        runs={"anyio.run": run} if run else {},
        **more,
    )


IS_UVLOOP = 'assert type(asyncio.get_running_loop()).__module__.startswith("uvloop")'

KINDS = [
    Kind(
        name="asyncio",
        label="asyncio loop",
        needs=(),
        imports="",
        sleep="asyncio.sleep",
        offload="asyncio.to_thread(time.sleep, 0.3)",
        marker="@pytest.mark.asyncio",
        running_check="assert type(asyncio.get_running_loop()).__module__.startswith('asyncio')",
        runs={"asyncio.run": "asyncio.run({main}())"},
        auto_ini="asyncio_mode = auto",
    ),
    Kind(
        name="trio",
        label="trio run",
        needs=("trio",),
        imports="import trio",
        sleep="trio.sleep",
        offload="trio.to_thread.run_sync(time.sleep, 0.3)",
        marker="@pytest.mark.trio",
        marked_needs=("pytest_trio",),
        plugins=("trio",),
        runs={"trio.run": "trio.run({main})"},
        auto_ini="trio_mode = true",
        more_waiting="""
    with trio.move_on_after(0.3):
        await trio.sleep_forever()  # waiting with no deadline of its own
""",
    ),
    Kind(
        name="uvloop",
        label="uvloop loop",
        needs=("uvloop",),
        imports="import uvloop",
        sleep="asyncio.sleep",
        offload="asyncio.to_thread(time.sleep, 0.3)",
        marker="@pytest.mark.asyncio",
        fixtures="""
@pytest.fixture(scope="session")
def event_loop_policy():
    return uvloop.EventLoopPolicy()
""",
        marked_args=("-W", "ignore::DeprecationWarning"),
        running_check=IS_UVLOOP,
        runs={
            "uvloop.run": "uvloop.run({main}())",
            "new_event_loop": "loop = uvloop.new_event_loop(); "
            "loop.run_until_complete({main}()); loop.close()",
            "Runner": "with asyncio.Runner(loop_factory=uvloop.new_event_loop) as r: "
            "r.run({main}())",
            "policy": "asyncio.set_event_loop_policy(uvloop.EventLoopPolicy()); "
            "asyncio.run({main}()); asyncio.set_event_loop_policy(None)",
        },
        stack_cut_at_run=True,
    ),
    anyio_kind("asyncio", "asyncio loop", run="anyio.run({main})"),
    anyio_kind("trio", "trio run", run="anyio.run({main}, backend='trio')", needs=("trio",)),
    anyio_kind(
        "uvloop",
        "uvloop loop",
        backend='("asyncio", {"use_uvloop": True})',
        needs=("uvloop",),
        running_check=IS_UVLOOP,
        stack_cut_at_run=True,
    ),
]


def kinds(*, having=None):
    """KINDS as parameters (optionally only those where ``having(kind)`` is true)."""
    return [pytest.param(k, id=k.name) for k in KINDS if having is None or having(k)]


def kind_runs():
    """Every kind's every sync runner as parameters."""
    return [
        pytest.param(k, run, id=f"{k.name}-{name}") for k in KINDS for name, run in k.runs.items()
    ]


def require(kind, marked=False):
    for module in kind.needs + (kind.marked_needs if marked else ()):
        pytest.importorskip(module)


@pytest.fixture
def inner(inner, kind):
    """Inner sessions with the plugin that runs the kind's marked tests, if it has one."""
    return inner.using(plugins=kind.plugins)


def assert_reported(result, inner, kind, test, **outcomes):
    """One block, in blocker, reported in full and as the failure of ``test``."""
    inner.assert_blocked_at(result, "# the blocking line", "blocker", **outcomes)
    result.stdout.fnmatch_lines(
        [
            "*loopguard: event loop blocked for [34]?? ms (threshold 100 ms)*",
            inner.site("# the blocking line", "blocker"),
            "*>*time.sleep(0.4)  # the blocking line",
            f"*loop thread 'MainThread', {kind.label}*",
            f"FAILED test_it.py::{test} - loopguard: * at *",
        ]
    )
    if kind.stack_cut_at_run:
        report = result.stdout.str().split("Python stack of the loop thread")[1]
        report = report.split("loop thread 'MainThread'")[0]
        assert "_pytest" not in report and "pluggy" not in report and "loopguard" not in report


@pytest.mark.parametrize("kind", kinds())
def test_blocking_marked_async_test_fails_naming_the_line(inner, kind):
    require(kind, marked=True)
    result = inner.run(
        kind.header()
        + f"""
{kind.marker}
async def test_marked():
    {kind.running_check}
    await blocker()
""",
        *kind.marked_args,
    )
    assert_reported(result, inner, kind, "test_marked")


@pytest.mark.parametrize(("kind", "run"), kind_runs())
def test_blocking_loop_run_in_a_sync_test_fails_naming_the_line(inner, kind, run):
    require(kind)
    result = inner.run(kind.header() + f"\ndef test_sync():\n    {run.format(main='blocker')}\n")
    assert_reported(result, inner, kind, "test_sync")


@pytest.mark.parametrize("kind", kinds(having=lambda k: k.auto_ini))
def test_auto_mode_runs_unmarked_async_tests_watched(inner, kind):
    require(kind, marked=True)
    result = inner.run(
        kind.header()
        + f"""
async def test_auto():
    await blocker()

async def test_fine():
    await {kind.sleep}(0.3)
""",
        ini=kind.auto_ini + "\n",
    )
    assert_reported(result, inner, kind, "test_auto", failed=1, passed=1)


@pytest.mark.parametrize("kind", kinds())
def test_idle_short_and_offloaded_work_passes(inner, kind):
    require(kind, marked=True)
    # Run both ways a test runs a loop: by a plugin, and by the test itself.
    sync = "".join(
        f"\ndef test_sync_{i}():\n    {run.format(main='fine')}\n"
        for i, run in enumerate(kind.runs.values())
    )
    result = inner.run(
        kind.header()
        + f"""
async def fine():
    {kind.running_check}
    await {kind.sleep}(0.5)  # idle for longer than the threshold
    for _ in range(5):
        time.sleep(0.03)  # short blocks
        await {kind.sleep}(0)
    await {kind.offload}  # offloaded
{kind.more_waiting}
{kind.marker}
async def test_marked():
    await fine()
"""
        + sync,
        *kind.marked_args,
    )
    result.assert_outcomes(passed=1 + len(kind.runs))


@pytest.mark.parametrize("kind", kinds(having=lambda k: k.runs))
def test_loop_in_a_background_thread_names_the_thread(inner, kind):
    require(kind)
    run = next(iter(kind.runs.values())).format(main="blocker")
    result = inner.run(
        kind.header()
        + f"""
def test_thread():
    def work():
        {run}
    t = threading.Thread(target=work, name="worker-loop")
    t.start()
    t.join()
""",
    )
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            inner.site("# the blocking line", "blocker"),
            f"*loop thread 'worker-loop', {kind.label}*",
        ]
    )
