import dataclasses
import os

# Loaded now, before any test's pytester snapshot of sys.modules: an in-process inner session
# (see InnerSession.run) then finds the plugin and its runtime already imported and leaves them
# in place, instead of importing fresh copies that pytester drops after each test (each copy
# would install its own patches, garbage collection callback and import hook again).
import loopguard.plugin  # noqa: F401  (imported for its side effect on sys.modules)
import pytest
from loopguard import _native
from loopguard._runtime import runtime

pytest_plugins = ["pytester"]

# Why the installed native module lacks its Linux-only parts (the portable path that macOS and
# Windows get, built on Linux by script/test-portable), or None.
PORTABLE = _native.portable()


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "linux_full: needs the native module's Linux-only parts (the GIL-free reader, system "
        "call names, run-queue and CPU time, the epoll hook); skipped on the portable path",
    )


def pytest_collection_modifyitems(config, items):
    """Tests marked ``slow`` first (the order is otherwise kept, or pytest-randomly's): the
    parallel workers (``-n``) then start on them and finish together, instead of one worker
    ending the run alone on a long test handed out last.

    Under ``--dist worksteal`` each worker first gets a contiguous share of the items, in
    order (later, an idle worker takes tests from the back of a busy one's queue): the slow
    tests are dealt out in turn to the front of each share, not all put in the first one,
    whose worker would run them one after another."""
    slow = [item for item in items if item.get_closest_marker("slow") is not None]
    rest = [item for item in items if item.get_closest_marker("slow") is None]
    shares = _worksteal_shares(config, len(items))
    if len(shares) < 2:
        items[:] = slow + rest
        return
    dealt = [slow[i :: len(shares)] for i in range(len(shares))]
    items.clear()
    for share, first in zip(shares, dealt, strict=True):
        take = max(0, share - len(first))
        items.extend(first + rest[:take])
        del rest[:take]
    items.extend(rest)  # none left, unless a share is smaller than its slow tests


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node):
    """Tells each xdist worker how the tests are distributed (a worker's own ``dist`` option
    is "no")."""
    node.workerinput["suite_dist"] = node.config.getoption("dist")


def _worksteal_shares(config, count):
    """How many of ``count`` items each xdist worker is first given, in order, under
    ``--dist worksteal`` (as its scheduler splits them: the remaining items evenly among the
    workers still to serve); ``[]`` in a run without workers or with another distribution."""
    workerinput = getattr(config, "workerinput", None)
    if workerinput is None or workerinput.get("suite_dist") != "worksteal":
        return []
    shares = []
    for left in range(workerinput["workercount"], 0, -1):
        shares.append((count - sum(shares)) // left)
    return shares


def pytest_runtest_setup(item):
    if PORTABLE is not None and item.get_closest_marker("linux_full") is not None:
        pytest.skip(f"the portable path: {PORTABLE}")


# Inner pytest sessions inherit the environment. These variables change what they print (CI
# turns off pytest's cutting of summary lines to the terminal's width; GITHUB_ACTIONS turns on
# loopguard's annotations) or how loopguard judges, so a test that wants one sets it itself.
# LOOPGUARD_SAMPLER and LOOPGUARD_DISABLE_VM_READV stay: they select how stacks are read, to run
# the whole suite on the fallback path.
_KEPT = {
    "LOOPGUARD_SAMPLER",
    "LOOPGUARD_DISABLE_VM_READV",
    "LOOPGUARD_SIMULATE_PYTHON",
    "LOOPGUARD_STRESS_SECONDS",
}


@pytest.fixture(autouse=True)
def _neutral_environment(monkeypatch):
    for name in list(os.environ):
        if name in ("CI", "BUILD_NUMBER") or name.startswith("GITHUB_"):
            monkeypatch.delenv(name)
        elif name.startswith("LOOPGUARD_") and name not in _KEPT:
            monkeypatch.delenv(name)


# Written into every inner session's pytest.ini: keeps pytest-asyncio quiet and predictable,
# and (KEEP_ORDER) the order of tests as written (pytest-randomly, when installed, is tested on
# its own).
INI = """
[pytest]
asyncio_default_fixture_loop_scope = function
"""
KEEP_ORDER = "addopts = -p no:randomly\n"

# Plugins installed for the suite's sake that most inner sessions do not use, by entry-point
# name, and slow to load: together they cost a subprocess session about half of its start-up
# (pytest-trio and anyio's plugin import trio and anyio; pytest-html imports jinja2). An inner
# session blocks them (``-p no:NAME``), except those its module names in ``plugins``; a module
# whose sessions use one (a ``trio`` or ``anyio`` marker, ``--html``, ``--cov``), or that tests
# how plugins load together, names it.
SLOW_PLUGINS = ("trio", "anyio", "html", "html_fixtures", "metadata", "pytest_cov")


@dataclasses.dataclass(frozen=True)
class InnerSession:
    """Runs real pytest sessions, in a subprocess or in this process, in ``pytester``'s
    directory.

    A test module sets what all its sessions share in a module-level ``INNER`` dict of these
    fields (or, when that takes code, a fixture of its own named ``inner`` that calls
    ``using(...)``); each ``run`` writes the ini and the test file, then runs pytest.

    ``inprocess``: run the sessions in this process (``pytester.runpytest_inprocess``), for
    what needs no watchdog to fire: settings that are only parsed, usage errors, reports read
    or written from given data. A session whose test must really be caught blocking runs in a
    subprocess, on a process of its own (the default).
    """

    pytester: pytest.Pytester
    header: str = ""  # put before the source of every test_it.py
    ini: str = ""  # added to INI
    args: tuple[str, ...] = ()  # pytest arguments given before each run's own
    files: dict[str, str] = dataclasses.field(default_factory=dict)  # more files, by name
    inprocess: bool = False  # each run's default: see run
    plugins: tuple[str, ...] = ()  # which of SLOW_PLUGINS stay loaded (all others are blocked)

    def using(self, **shared) -> "InnerSession":
        return dataclasses.replace(self, **shared)

    def write(self, source, ini="", keep_order=True, **files):
        """Write the ini, test_it.py (``header + source``, unless ``source`` is None) and the
        module's ``files`` updated by ``files`` (Python files, by name without ``.py``)."""
        self.pytester.makeini(INI + (KEEP_ORDER if keep_order else "") + self.ini + ini)
        files = {**self.files, **files}
        if source is not None:
            files["test_it"] = self.header + source
        if files:
            self.pytester.makepyfile(**files)

    def run(self, source, *args, ini="", plugin=True, keep_order=True, inprocess=None, **files):
        """``write`` the files, then run pytest with loopguard (unless ``plugin`` is false),
        the module's ``args`` and then these: in a subprocess, or in this process when
        ``inprocess`` (by default, the module's ``inprocess``) is true."""
        self.write(source, ini, keep_order, **files)
        blocked = [("-p", f"no:{name}") for name in SLOW_PLUGINS if name not in self.plugins]
        args = (
            *(("-p", "loopguard") if plugin else ()),
            *(arg for pair in blocked for arg in pair),
            *self.args,
            *args,
        )
        if self.inprocess if inprocess is None else inprocess:
            return run_inprocess(self.pytester, *args)
        return self.pytester.runpytest_subprocess(*args)

    def line(self, marker, filename="test_it.py"):
        """The number of the first line of ``filename`` containing ``marker``."""
        lines = (self.pytester.path / filename).read_text().splitlines()
        return next(i for i, text in enumerate(lines, 1) if marker in text)

    def site(self, marker, function, filename="test_it.py"):
        """An fnmatch pattern for a report's line naming the marked line, in ``function``."""
        return f"*{filename}:{self.line(marker, filename)} in {function}"

    def assert_blocked_at(self, result, marker, function, filename="test_it.py", **outcomes):
        """The session had ``outcomes`` (one failure by default) and its report names the line
        marked ``marker`` as the blocking one, in ``function``."""
        result.assert_outcomes(**(outcomes or {"failed": 1}))
        result.stdout.fnmatch_lines([self.site(marker, function, filename)])


def run_inprocess(pytester, *args):
    """``pytester.runpytest_inprocess(*args)``, leaving this process as it was.

    The inner session shares this interpreter. Its loopguard plugin acquires the process-wide
    runtime and releases it at the session's end; the instrumentation the runtime installs on
    first use (asyncio's ``run_forever``, ``Thread.start``, the import hook, the garbage
    collection callback) stays, and does nothing while nobody holds the runtime, as after any
    ``guard()`` or ``offload_check()`` in this process. What else it could leave is checked
    here: the runtime must be released (no threshold, no raise mode, no lag probe, no events
    kept). The watchdog is stopped before and after the session (nobody holds it then), so
    that the session starts its own with its own settings, as a new process would (the sampler
    is chosen when the watchdog starts).
    """
    assert not runtime.active, "an in-process session needs the runtime free"
    runtime.shutdown()  # left running by a guard() of an earlier test: the session starts its own
    try:
        return pytester.runpytest_inprocess(*args)
    finally:
        held = runtime.active
        raising = bool(getattr(runtime, "_raisers", ()))
        probing = runtime.lag_probing
        runtime.shutdown()
        assert not held, "the in-process session did not release loopguard's runtime"
        assert not raising, "the in-process session left raise mode on"
        assert not probing, "the in-process session left the lag probe on"
        assert not runtime.events, "the in-process session left events in the log"


@pytest.fixture
def inner(pytester, request):
    """An InnerSession with what the test module shares: its ``INNER`` dict, if any."""
    return InnerSession(pytester).using(**getattr(request.module, "INNER", {}))
