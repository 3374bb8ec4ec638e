"""The documented ways to turn loopguard on (and off) load its hooks and fixture exactly once."""

import pytest

BLOCKING = """
import asyncio, time

def test_blocks():
    async def main():
        time.sleep(0.3)
    asyncio.run(main())

def test_fixture(loopguard):
    assert loopguard.events == []
"""

INI = """
[pytest]
asyncio_default_fixture_loop_scope = function
addopts = -p no:randomly {addopts}
"""


@pytest.mark.parametrize(
    ("how", "args", "conftest", "addopts"),
    [
        ("-p", ("-p", "loopguard"), None, ""),
        ("conftest", (), 'pytest_plugins = ["loopguard"]\n', ""),
        ("addopts", (), None, "-p loopguard"),
    ],
)
def test_each_documented_way_turns_loopguard_on(pytester, how, args, conftest, addopts):
    pytester.makeini(INI.format(addopts=addopts))
    if conftest:
        pytester.makeconftest(conftest)
    pytester.makepyfile(test_it=BLOCKING)
    result = pytester.runpytest_subprocess(*args)
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        ["loopguard: threshold 100 ms*", "*FAILED test_it.py::test_blocks*"]
    )
    assert result.stdout.str().count("loopguard: blocking hotspots") == 1


def test_p_no_loopguard_turns_it_off_even_when_a_conftest_asks_for_it(pytester):
    pytester.makeini(INI.format(addopts=""))
    pytester.makeconftest('pytest_plugins = ["loopguard"]\n')
    pytester.makepyfile(test_it=BLOCKING.split("def test_fixture")[0])
    result = pytester.runpytest_subprocess("-p", "no:loopguard")
    result.assert_outcomes(passed=1)
    assert "loopguard:" not in result.stdout.str()
