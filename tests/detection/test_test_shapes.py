"""Every shape a test can take is guarded and attributed like a function, and never broken.

(In fnmatch patterns ``[[]`` and ``[]]`` are literal brackets; functions are matched as
``*name`` because 3.11+ report qualified names, ``TestService.test_blocks``.)
"""

import json

HEADER = """
import asyncio, time, unittest
import pytest
"""


INNER = dict(header=HEADER, args=("-rA",))


def test_methods_of_a_plain_class(inner):
    result = inner.run(
        """
class TestService:
    @pytest.fixture
    def value(self):
        return 1

    @pytest.mark.asyncio
    async def test_blocks(self, value):
        assert self.helper() == value
        time.sleep(0.3)  # method block

    @pytest.mark.asyncio
    async def test_fine(self, value):
        await asyncio.sleep(0)
        assert value == 1

    def test_sync_method_runs_a_loop(self):
        async def main():
            time.sleep(0.3)  # sync method block
        asyncio.run(main())

    def helper(self):
        return 1
""",
    )
    result.assert_outcomes(failed=2, passed=1)
    result.stdout.fnmatch_lines_random(
        [
            inner.site("# method block", "*test_blocks"),
            inner.site("# sync method block", "*main"),
            "FAILED test_it.py::TestService::test_blocks - loopguard: * at *",
            "FAILED test_it.py::TestService::test_sync_method_runs_a_loop - loopguard:*",
            "PASSED test_it.py::TestService::test_fine",
        ]
    )
    assert "required positional argument" not in result.stdout.str()


def test_unittest_testcase(inner):
    result = inner.run(
        """
class TestCase(unittest.TestCase):
    def setUp(self):
        self.n = 1

    def test_blocks(self):
        async def main():
            time.sleep(0.3)  # testcase block
        asyncio.run(main())

    def test_fine(self):
        async def main():
            await asyncio.sleep(0.01)
        asyncio.run(main())
        self.assertEqual(self.n, 1)
""",
    )
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines_random(
        [
            inner.site("# testcase block", "*main"),
            "FAILED test_it.py::TestCase::test_blocks - loopguard: * at *",
            "PASSED test_it.py::TestCase::test_fine",
        ]
    )


def test_isolated_asyncio_testcase(inner):
    result = inner.run(
        """
class TestAsync(unittest.IsolatedAsyncioTestCase):
    async def asyncSetUp(self):
        self.n = 1

    async def test_blocks(self):
        await asyncio.sleep(0)
        time.sleep(0.3)  # isolated block

    async def test_fine(self):
        await asyncio.sleep(0.01)
        self.assertEqual(self.n, 1)

    async def test_already_failing(self):
        time.sleep(0.3)  # before the assertion
        self.assertEqual(self.n, 2)
""",
    )
    result.assert_outcomes(failed=2, passed=1)
    result.stdout.fnmatch_lines_random(
        [
            inner.site("# isolated block", "*test_blocks"),
            "FAILED test_it.py::TestAsync::test_blocks - loopguard: * at *",
            "FAILED test_it.py::TestAsync::test_already_failing - AssertionError*",
            "PASSED test_it.py::TestAsync::test_fine",
            # A test that failed on its own keeps its failure; the block is a section.
            "*loopguard: blocked event loop (call)*",
        ]
    )


def test_parametrized_tests_are_judged_per_case(inner):
    result = inner.run(
        """
@pytest.mark.asyncio
@pytest.mark.parametrize("delay", [0.0, 0.3])
async def test_param(delay):
    time.sleep(delay)  # param block

@pytest.mark.asyncio
@pytest.mark.parametrize(
    "delay",
    [pytest.param(0.3, marks=pytest.mark.loopguard(threshold="1s"), id="allowed"), 0.3],
)
async def test_marked_case(delay):
    time.sleep(delay)
""",
        "-v",
    )
    result.assert_outcomes(failed=2, passed=2)
    result.stdout.fnmatch_lines_random(
        [
            "PASSED test_it.py::test_param[[]0.0[]]",
            "FAILED test_it.py::test_param[[]0.3[]] - loopguard: * at *",
            "PASSED test_it.py::test_marked_case[[]allowed[]]",
            "FAILED test_it.py::test_marked_case[[]0.3[]] - loopguard: * at *",
            inner.site("# param block", "test_param*"),
        ]
    )
    # The session summary (hotspot table; -v lists the tests) names the case.
    result.stdout.fnmatch_lines(
        ["*= loopguard: blocking hotspots =*", "    test_it.py::test_param[[]0.3[]] (call)"]
    )


def test_doctests_that_run_a_loop(inner):
    result = inner.run(
        None,
        "--doctest-modules",
        "mod.py",
        mod='''
import asyncio, time


def blocker():
    """
    >>> asyncio.run(work(0.3))
    'done'
    """


def fine():
    """
    >>> asyncio.run(work(0.0))
    'done'
    """


async def work(delay):
    await asyncio.sleep(0)
    time.sleep(delay)  # doctest block
    return "done"
''',
    )
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines_random(
        [
            f"*mod.py:{inner.line('# doctest block', 'mod.py')} in work",
            "FAILED mod.py::mod.blocker - loopguard: * at *",
            "PASSED mod.py::mod.fine",
        ]
    )


def test_shapes_under_xdist(inner):
    result = inner.run(
        """
class TestPlain:
    @pytest.mark.asyncio
    async def test_blocks(self):
        time.sleep(0.3)

class TestIsolated(unittest.IsolatedAsyncioTestCase):
    async def test_blocks(self):
        time.sleep(0.3)

@pytest.mark.asyncio
@pytest.mark.parametrize("n", [1, 2])
async def test_param(n):
    time.sleep(0.3)
""",
        "-n",
        "2",
        "-v",
    )
    result.assert_outcomes(failed=4)
    result.stdout.fnmatch_lines_random(
        [
            "    test_it.py::TestPlain::test_blocks (call)",
            "    test_it.py::TestIsolated::test_blocks (call)",
            "    test_it.py::test_param[[]1[]] (call)",
            "    test_it.py::test_param[[]2[]] (call)",
        ]
    )


LOOP_SCOPE = """
import pytest_asyncio

# pytest-asyncio 0.23 calls it scope=, 0.24 and later loop_scope=.
_version = tuple(int(p) for p in pytest_asyncio.__version__.split(".")[:2])
LOOP = "loop_scope" if _version >= (0, 24) else "scope"
"""


def test_tests_sharing_a_module_scoped_loop_are_judged_each_on_its_own(inner):
    result = inner.run(
        LOOP_SCOPE
        + """
pytestmark = pytest.mark.asyncio(**{LOOP: "module"})
loops = []

async def test_first():
    loops.append(asyncio.get_running_loop())

async def test_blocks():
    loops.append(asyncio.get_running_loop())
    time.sleep(0.3)  # shared loop block

async def test_last():
    loops.append(asyncio.get_running_loop())
    assert loops[0] is loops[1] is loops[2]

class TestClassLoop:
    pytestmark = pytest.mark.asyncio(**{LOOP: "class"})

    async def test_blocks_in_class(self):
        time.sleep(0.3)  # class loop block

    async def test_fine_in_class(self):
        await asyncio.sleep(0)
""",
    )
    result.assert_outcomes(failed=2, passed=3)
    result.stdout.fnmatch_lines_random(
        [
            inner.site("# shared loop block", "test_blocks"),
            inner.site("# class loop block", "*test_blocks_in_class"),
            "FAILED test_it.py::test_blocks - loopguard: * at *",
            "FAILED test_it.py::TestClassLoop::test_blocks_in_class - loopguard:*",
            "PASSED test_it.py::test_first",
            "PASSED test_it.py::test_last",
            "PASSED test_it.py::TestClassLoop::test_fine_in_class",
        ]
    )


PHASES = """
def run_blocking():
    async def main():
        time.sleep(0.3)  # the blocking line
    asyncio.run(main())

@pytest.fixture
def blocks_in_setup():
    run_blocking()

@pytest.fixture
def fails_then_blocks_in_teardown(request):
    request.addfinalizer(run_blocking)
    raise RuntimeError("the fixture's setup fails")

@pytest.fixture
def blocks_in_teardown():
    yield
    run_blocking()

def test_setup_blocks(blocks_in_setup):
    pass

def test_setup_fails(fails_then_blocks_in_teardown):
    pass

def test_teardown_blocks(blocks_in_teardown):
    pass
"""


def _phases_and_guarded(pytester, name):
    data = json.loads((pytester.path / name).read_text())
    blocks = sorted((e["test"].split("::")[-1], e["began_in"]) for e in data["events"])
    return blocks, data["totals"]["guarded"]


def test_each_phase_is_judged_whatever_the_phase_before_it_did(inner, pytester):
    """A phase starts when pytest runs it: the call only after a setup that passed (a setup
    loopguard failed included), the teardown after either; only a test whose call ran is
    counted as guarded. Under --setup-only no call runs and no test is guarded."""
    result = inner.run(PHASES, "--loopguard-json=report.json")
    result.assert_outcomes(passed=1, errors=4)
    result.stdout.fnmatch_lines_random(
        [
            "ERROR test_it.py::test_setup_blocks - loopguard: *",
            "ERROR test_it.py::test_setup_fails - RuntimeError: the fixture's setup fails",
            "ERROR test_it.py::test_setup_fails - loopguard: *",
            "ERROR test_it.py::test_teardown_blocks - loopguard: *",
        ]
    )
    assert _phases_and_guarded(pytester, "report.json") == (
        [
            ("test_setup_blocks", "setup"),
            ("test_setup_fails", "teardown"),
            ("test_teardown_blocks", "teardown"),
        ],
        1,  # test_teardown_blocks: the other two never ran their call
    )
    result = inner.run(PHASES, "--setup-only", "--loopguard-json=setup-only.json")
    assert _phases_and_guarded(pytester, "setup-only.json") == (
        [
            ("test_setup_blocks", "setup"),
            ("test_setup_fails", "teardown"),
            ("test_teardown_blocks", "teardown"),
        ],
        0,
    )
