"""The documented ways to turn loopguard on (and off) load its hooks and fixture exactly once."""

import sys

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


# Another distribution whose pytest plugin is also named "loopguard" (fastapi-loopguard's is):
# its module, and its metadata with the entry point, in a directory on the inner session's path.
FAKE_PLUGIN = """
def pytest_report_header(config):
    return ["fake-loopguard's plugin is on"]
"""
FAKE_METADATA = "Metadata-Version: 2.1\nName: fake-loopguard\nVersion: 0.9.0\n"
FAKE_ENTRY_POINTS = "[pytest11]\nloopguard = fake_lg.plugin\n"


@pytest.fixture
def fake_loopguard(pytester, monkeypatch):
    """Install the other distribution where pytest's entry-point loading sees it."""
    site = pytester.mkdir("site")
    (site / "fake_lg").mkdir()
    (site / "fake_lg" / "__init__.py").write_text("")
    (site / "fake_lg" / "plugin.py").write_text(FAKE_PLUGIN)
    info = site / "fake_loopguard-0.9.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(FAKE_METADATA)
    (info / "entry_points.txt").write_text(FAKE_ENTRY_POINTS)
    monkeypatch.setenv("PYTHONPATH", str(site))
    pytester.makeini(INI.format(addopts=""))
    pytester.makepyfile(test_it=BLOCKING)


def _assert_clash_error(result, asked):
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "collected" not in result.stdout.str()  # no test ran
    err = result.stderr.str()
    assert f"loopguard: {asked} loaded the pytest plugin of fake-loopguard 0.9.0" in err
    assert "-p loopguard.plugin" in err and 'pytest_plugins = ["loopguard.plugin"]' in err
    assert "uninstall fake-loopguard" in err


@pytest.mark.parametrize(
    ("asked", "args", "conftest", "addopts"),
    [
        ("-p loopguard", ("-p", "loopguard"), None, ""),
        ("-p loopguard", (), None, "-p loopguard"),
        ('pytest_plugins = ["loopguard"] in conftest.py', (), 'pytest_plugins = ["loopguard"]', ""),
    ],
    ids=["-p", "addopts", "conftest"],
)
def test_asking_for_loopguard_when_another_plugin_has_its_name_is_a_usage_error(
    pytester, fake_loopguard, asked, args, conftest, addopts
):
    if addopts:
        pytester.makeini(INI.format(addopts=addopts))
    if conftest:
        pytester.makeconftest(conftest)
    _assert_clash_error(pytester.runpytest_subprocess(*args), asked)


def test_a_module_of_the_project_named_loopguard_is_named_in_the_error(pytester):
    pytester.makeini(INI.format(addopts=""))
    pytester.makepyfile(test_it=BLOCKING, loopguard="")  # the directory is on the path
    result = pytester.runpytest_subprocess("-p", "loopguard")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*-p loopguard loaded the module loopguard (*loopguard.py), not loopguard's plugin*"]
    )


@pytest.mark.parametrize(
    ("args", "conftest"),
    [(("-p", "loopguard.plugin"), None), ((), 'pytest_plugins = ["loopguard.plugin"]\n')],
    ids=["-p", "conftest"],
)
def test_the_collision_proof_spelling_guards_with_the_other_plugin_installed(
    pytester, fake_loopguard, args, conftest
):
    if conftest:
        pytester.makeconftest(conftest)
    result = pytester.runpytest_subprocess(*args)
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines_random(
        [
            "loopguard: threshold 100 ms*",
            "fake-loopguard's plugin is on",  # the other one loads as it always did
            "    test_it.py:5 in *main",  # 3.10 names frames without their qualified names
            "FAILED test_it.py::test_blocks - loopguard: * at test_it.py:5*",
        ]
    )


def test_p_no_loopguard_with_the_other_plugin_installed_is_not_an_error(pytester, fake_loopguard):
    pytester.makeconftest('pytest_plugins = ["loopguard"]\n')
    pytester.makepyfile(test_it=BLOCKING.split("def test_fixture")[0])
    result = pytester.runpytest_subprocess("-p", "no:loopguard")
    result.assert_outcomes(passed=1)
    assert "fake-loopguard's plugin is on" not in result.stdout.str()
    assert "loopguard:" not in result.stdout.str()


NOT_LOADED = """
import asyncio, sys, time

def test_blocks_unguarded():
    async def main():
        time.sleep(0.3)
    asyncio.run(main())

def test_loopguard_is_not_imported():
    assert "loopguard" not in sys.modules and "loopguard._native" not in sys.modules
"""


@pytest.mark.parametrize("other", [False, True], ids=["alone", "other-installed"])
def test_installed_without_opting_in_nothing_changes(pytester, request, other):
    if other:
        request.getfixturevalue("fake_loopguard")
    pytester.makeini(INI.format(addopts=""))
    pytester.makepyfile(test_it=NOT_LOADED)
    result = pytester.runpytest_subprocess()
    assert result.ret == pytest.ExitCode.OK
    result.assert_outcomes(passed=2)
    assert "loopguard:" not in result.stdout.str() + result.stderr.str()


def test_the_distribution_ships_the_name_check_and_no_console_script():
    from importlib import metadata

    eps = metadata.distribution("pytest-loopguard").entry_points
    assert [(e.group, e.name, e.value) for e in eps] == [
        ("pytest11", "loopguard-name-check", "_loopguard_check")
    ]


def test_loopguard_imported_before_pytest_starts_draws_no_warning(pytester):
    # pytest marks the packages of distributions with a pytest11 entry point for assertion
    # rewriting, and warns about those already imported.
    pytester.makeini(INI.format(addopts=""))
    pytester.makepyfile(test_it="def test_nothing():\n    pass\n")
    script = (
        "import sys, loopguard, pytest; sys.exit(pytest.main(['-p', 'no:cacheprovider', "
        "'-W', 'error::pytest.PytestAssertRewriteWarning', 'test_it.py']))"
    )
    result = pytester.run(sys.executable, "-c", script)
    assert result.ret == 0, result.stdout.str() + result.stderr.str()
    assert "rewritten" not in result.stdout.str() + result.stderr.str()
