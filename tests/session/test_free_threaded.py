"""Free-threaded CPython: loopguard is inactive, loudly, and never breaks the suite.

No free-threaded interpreter is at hand, so each inner session pretends to be one: a
``sitecustomize`` makes ``sysconfig`` report ``Py_GIL_DISABLED`` and makes loading the native
module fail, as an abi3 module fails on such a build. Any path that still reached the native
module would break the session.
"""

import pytest

PRETEND = """
import importlib.abc, sys, sysconfig

_real = sysconfig.get_config_var


def get_config_var(name):
    return 1 if name == "Py_GIL_DISABLED" else _real(name)


sysconfig.get_config_var = get_config_var


class _NoNative(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "loopguard._native":
            raise ImportError("the abi3 native module does not load on a free-threaded build")


sys.meta_path.insert(0, _NoNative())
"""

HEADER = """
import asyncio, sys, time, warnings
import pytest
import loopguard


def block():
    async def main():
        time.sleep(0.3)  # blocks the loop 3x the threshold

    asyncio.run(main())
"""

INNER = dict(header=HEADER, files={"sitecustomize": PRETEND})

INACTIVE_LINE = "loopguard: inactive, no event loop is watched: free-threaded CPython (*"


@pytest.mark.parametrize("plugin", ["loopguard", "loopguard.plugin"])
def test_the_plugin_loads_says_why_it_is_inactive_and_the_run_keeps_its_own_outcome(inner, plugin):
    result = inner.run(
        """
def test_blocks():
    block()

def test_fixture(loopguard):
    assert loopguard.events == [] and loopguard.lag.samples == 0
    with loopguard.expect_block():  # runs its body, expects nothing
        block()

def test_fails_on_its_own():
    assert 1 == 2

def test_the_native_module_is_a_stand_in():
    assert not hasattr(sys.modules["loopguard._native"], "__file__")
""",
        "-p",
        plugin,
        plugin=False,
    )
    assert result.ret == pytest.ExitCode.TESTS_FAILED  # the suite's own failure, nothing else
    result.assert_outcomes(passed=3, failed=1)
    lines = result.stdout.lines
    header = [i for i, line in enumerate(lines) if line.startswith("loopguard: inactive")]
    # Said in the header and again at the end, after the failures.
    failures = next(i for i, line in enumerate(lines) if "= FAILURES =" in line)
    assert len(header) == 2 and header[0] < 5 and header[1] > failures
    result.stdout.fnmatch_lines([INACTIVE_LINE, "*Py_GIL_DISABLED) is not supported: *"])
    assert "FAILED test_it.py::test_fails_on_its_own" in result.stdout.str()
    assert "loopguard: blocking hotspots" not in result.stdout.str()
    # expect_block() warned that it watched nothing.
    result.stdout.fnmatch_lines(["*LoopguardInactiveWarning: loopguard is inactive, *"])


def test_every_option_and_marker_is_accepted_and_checked(inner):
    ini = """
addopts = -p no:randomly -p loopguard --loopguard-threshold=50ms --loopguard-mode=warn
    --loopguard-json=lg.json --loopguard-stack=full --loopguard-gc=include --strict-markers
loopguard_allow = app/*.py
"""
    source = """
@pytest.mark.loopguard(threshold="10ms", max_lag="5ms")
def test_marked():
    block()

@pytest.mark.loopguard(enabled=False)
def test_disabled():
    block()
"""
    result = inner.run(source, ini=ini, plugin=False, keep_order=False)
    assert result.ret == pytest.ExitCode.OK
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines([INACTIVE_LINE])
    assert not (inner.pytester.path / "lg.json").exists()  # nothing was watched: no report
    # A bad value is the same usage error as on any interpreter.
    bad = inner.run(source, "--loopguard-threshold=soon", ini=ini, plugin=False, keep_order=False)
    assert bad.ret == pytest.ExitCode.USAGE_ERROR
    bad.stderr.fnmatch_lines(["*loopguard: invalid value for --loopguard-threshold: 'soon'*"])


def test_guard_and_offload_check_warn_once_and_run_their_body_without_the_plugin(inner):
    result = inner.run(
        """
ran = []


@loopguard.guard(threshold="50ms")
def decorated():
    block()
    ran.append("decorated")


@loopguard.guard()
async def decorated_async():
    time.sleep(0.3)
    ran.append("decorated_async")


def test_each_entry_point_runs_its_body_unwatched():
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with loopguard.guard(threshold="50ms") as g:
            block()
            ran.append("guard")
        decorated()
        asyncio.run(decorated_async())
        with loopguard.offload_check() as check:
            block()
            ran.append("offload_check")
        check.assert_offloaded()

        async def main():
            async with loopguard.offload_check() as c:
                await asyncio.to_thread(time.sleep, 0.1)
                ran.append("async offload_check")
            c.assert_offloaded()

        asyncio.run(main())
    assert ran == ["guard", "decorated", "decorated_async", "offload_check",
                   "async offload_check"]
    assert g.events == [] and check.events == [] and check.threads == []
    assert [w.category for w in seen] == [loopguard.LoopguardInactiveWarning]  # once
    message = str(seen[0].message)
    assert message.startswith("loopguard is inactive, loopguard.guard() runs its body")
    assert "free-threaded CPython" in message and "regular (GIL) build" in message
    assert seen[0].filename == __file__  # at the caller's with statement


def test_bad_arguments_are_still_refused():
    with pytest.raises(ValueError, match="threshold"):
        loopguard.guard(threshold="soon")
    with pytest.raises(ValueError, match="min_busy"):
        loopguard.offload_check(min_busy="never")
""",
        plugin=False,
    )
    result.assert_outcomes(passed=2)


# -W error: older pytest-asyncio versions of the matrix warn about the ini file themselves.
@pytest.mark.single_version
def test_a_suite_that_turns_warnings_into_errors_can_ignore_it(inner):
    source = """
def test_guarded():
    with loopguard.guard():
        block()
"""
    strict = inner.run(source, "-W", "error", plugin=False)
    strict.assert_outcomes(failed=1)
    strict.stdout.fnmatch_lines(["*LoopguardInactiveWarning: loopguard is inactive*"])
    ignored = inner.run(
        source, "-W", "error", "-W", "ignore::loopguard.LoopguardInactiveWarning", plugin=False
    )
    ignored.assert_outcomes(passed=1)


def test_xdist_workers_are_inactive_too(inner):
    pytest.importorskip("xdist")
    result = inner.run(
        """
@pytest.mark.parametrize("n", range(4))
def test_blocks(n, loopguard):
    block()
""",
        "-n",
        "2",
    )
    assert result.ret == pytest.ExitCode.OK
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines([INACTIVE_LINE])
