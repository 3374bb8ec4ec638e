"""What a run imports, and when: ``import loopguard`` and a run in which nothing blocks load
neither the reports, the HTML page, the failure text nor the command line; the parts imported
later (at a block, at the session's end, on first use) still work when nothing imported them
before."""

import json
import re
import subprocess
import sys
import textwrap

import pytest

# Modules that neither ``import loopguard`` nor a run without blocks or reports needs.
LATER = {
    "loopguard._asgi",
    "loopguard._cli",
    "loopguard._events",
    "loopguard._failure",
    "loopguard._fixes",
    "loopguard._fixture",
    "loopguard._guard",
    "loopguard._html",
    "loopguard._merge",
    "loopguard._offload",
    "loopguard._phases",
    "loopguard._report",
    "loopguard._reportfile",
    "loopguard._run",
    "loopguard._target",
    "loopguard._xdist",
}

PRINT_LOADED = """
import json, sys
print("LOADED " + json.dumps(sorted(m for m in sys.modules if m.startswith("loopguard"))))
"""


def _loaded(text: str) -> set[str]:
    line = next(ln for ln in text.splitlines() if ln.startswith("LOADED "))
    return set(json.loads(line[len("LOADED ") :]))


def _python(code: str) -> str:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout


def test_import_loopguard_loads_none_of_the_later_modules():
    loaded = _loaded(_python("import loopguard\n" + PRINT_LOADED))
    assert "loopguard" in loaded
    assert loaded & LATER == set()


def test_the_version_is_read_without_the_metadata():
    out = _python(
        """
        import sys
        import loopguard
        print("VERSION", loopguard.__version__, "importlib.metadata" in sys.modules)
        """
    )
    _, version, metadata = out.split()
    from importlib import metadata as md

    assert version == md.version("pytest-loopguard")
    assert metadata == "False"


def test_the_public_names_are_loaded_on_first_use():
    out = _python(
        """
        import loopguard
        from loopguard import BlockEvent, Frame, guard, offload_check
        print("NAMES", BlockEvent.__module__, Frame.__module__, guard.__module__,
              offload_check.__module__, loopguard.ThreadActivity.__name__)
        try:
            loopguard.no_such_name
        except AttributeError as e:
            print("MISSING", e)
        """
    )
    assert "NAMES loopguard loopguard loopguard loopguard ThreadActivity" in out
    assert "MISSING module 'loopguard' has no attribute 'no_such_name'" in out


def test_a_run_without_blocks_loads_none_of_the_later_modules(pytester):
    pytester.makeconftest(
        """
        import json, sys

        def pytest_unconfigure(config):
            names = sorted(m for m in sys.modules if m.startswith("loopguard"))
            print("LOADED " + json.dumps(names))
        """
    )
    pytester.makepyfile(
        """
        import asyncio

        def test_sync():
            pass

        def test_async_loop():
            asyncio.run(asyncio.sleep(0))
        """
    )
    result = pytester.runpytest_subprocess("-p", "loopguard", "-s", "-p", "no:randomly")
    result.assert_outcomes(passed=2)
    loaded = _loaded(result.stdout.str())
    assert "loopguard.plugin" in loaded
    assert loaded & LATER == set()


# The loop adapters: each imported with its library (asyncio's too).
ADAPTERS = {"loopguard._asyncio", "loopguard._trio", "loopguard._uvloop"}


def test_the_plugin_loads_no_adapter_of_a_library_not_imported():
    out = _python(
        "import sys, loopguard.plugin\nprint('ASYNCIO', 'asyncio' in sys.modules)\n" + PRINT_LOADED
    )
    assert "ASYNCIO False" in out
    assert _loaded(out) & (LATER | ADAPTERS) == set()


@pytest.mark.parametrize(
    ("library", "run", "kind"),
    [
        ("asyncio", "asyncio.run(main())", "asyncio loop"),
        ("trio", "trio.run(main)", "trio run"),
        ("uvloop", "uvloop.run(main())", "uvloop loop"),
    ],
)
def test_a_library_first_imported_by_a_test_is_watched(pytester, monkeypatch, library, run, kind):
    """The library, and with it loopguard's adapter, is imported inside the test, after the
    session has started (no plugin of the inner session imports it: none is loaded but
    loopguard, so that a sync suite's session, which never imports asyncio, is what runs)."""
    pytest.importorskip(library)
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    pytester.makeconftest(
        f"""
        import sys

        def pytest_sessionstart(session):
            print("AT START", "{library}" in sys.modules, "loopguard._{library}" in sys.modules)
        """
    )
    pytester.makepyfile(
        test_it=f"""
        import time

        def test_blocks():
            import {library}

            async def main():
                time.sleep(0.3)

            {run}
        """
    )
    result = pytester.runpytest_subprocess("-p", "loopguard", "-s")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "AT START False False",
            "*loopguard: event loop blocked for * ms*",
            "*time.sleep(0.3)*",
            f"*loop thread 'MainThread', {kind},*",
        ]
    )


BLOCKS = """
import asyncio, time

def test_blocks():
    async def main():
        time.sleep(0.3)
    asyncio.run(main())
"""


def test_the_session_end_reports_are_written_by_a_run_that_imported_none_of_them(pytester):
    """The HTML page's module is first imported at the session's end (the JSON report's, at
    start-up: it checks that the report paths are writable)."""
    pytester.makeconftest(
        """
        import sys

        def pytest_sessionstart(session):
            later = ("loopguard._html", "loopguard._merge", "loopguard._xdist")
            later = [m for m in later if m in sys.modules]
            print("AT START", later)
        """
    )
    pytester.makepyfile(test_it=BLOCKS)
    result = pytester.runpytest_subprocess(
        "-p",
        "loopguard",
        "-s",
        "-p",
        "no:randomly",
        "--loopguard-json=report.json",
        "--loopguard-html=report.html",
    )
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["AT START []", "*JSON report written to*", "*HTML report*"])
    data = json.loads((pytester.path / "report.json").read_text())
    assert [e["test"] for e in data["events"]] == ["test_it.py::test_blocks"]
    assert "test_blocks" in (pytester.path / "report.html").read_text()


def test_a_failure_after_tests_that_did_not_block_is_reported_in_full(pytester):
    pytester.makepyfile(
        test_a="def test_quiet():\n    pass\n",
        test_b=BLOCKS,
    )
    result = pytester.runpytest_subprocess("-p", "loopguard", "-p", "no:randomly")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*loopguard: event loop blocked for * ms (threshold 100 ms)*",
            "*time.sleep(0.3)*",
            "*loopguard: blocking hotspots*",
        ]
    )


def test_xdist_workers_ship_a_block_that_loads_the_failure_text_late(pytester):
    pytest.importorskip("xdist")
    pytester.makepyfile(
        test_a="def test_quiet():\n    pass\n",
        test_b=BLOCKS,
    )
    result = pytester.runpytest_subprocess("-p", "loopguard", "-n", "2", "-p", "no:randomly")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        ["*loopguard: event loop blocked for * ms*", "*time.sleep(0.3)*", "*FAILED*test_blocks*"]
    )


def test_python_m_loopguard_commands_work_from_a_fresh_process(pytester):
    pytester.makepyfile(test_it=BLOCKS)
    pytester.runpytest_subprocess("-p", "loopguard", "--loopguard-json=a.json")

    def run(*args):
        return subprocess.run(
            [sys.executable, "-m", "loopguard", *args],
            cwd=pytester.path,
            capture_output=True,
            text=True,
            timeout=120,
        )

    assert "merge" in run("--help").stdout
    summary = run("summary", "a.json")
    # 3.10 names the function without its qualified name.
    assert re.search(r"test_it\.py:5 in (test_blocks\.<locals>\.)?main ", summary.stdout), (
        summary.stdout + summary.stderr
    )
    assert run("merge", "a.json", "-o", "m.json").returncode == 0
    merged = json.loads((pytester.path / "m.json").read_text())
    assert [e["test"] for e in merged["events"]] == ["test_it.py::test_blocks"]
    assert run("html", "m.json", "-o", "m.html").returncode == 0
    assert "test_blocks" in (pytester.path / "m.html").read_text()


# Counts the collector's runs that start while one of loopguard's own submodules is being
# loaded (its module code on the stack; the package's ``__init__``, loaded by Python's own
# loader, is not one), with the young generation's threshold at 10 objects: a module load that
# let the collector run would be seen in several.
COUNT_COLLECTIONS_IN_LOADS = """
import gc, os, sys

in_loads = []
total = [0]

def watch(phase, info):
    if phase != "start":
        return
    total[0] += 1
    f = sys._getframe(0).f_back
    while f is not None:
        code = f.f_code
        name = code.co_filename
        if code.co_name == "<module>" and os.sep + "loopguard" + os.sep + "_" in name:
            if name.endswith("__init__.py"):
                return
            in_loads.append(os.path.basename(code.co_filename))
            return
        f = f.f_back

gc.set_threshold(10)
gc.callbacks.append(watch)
"""


def test_loopguard_loads_its_modules_with_the_collector_paused():
    out = _python(
        COUNT_COLLECTIONS_IN_LOADS
        + """
import loopguard.plugin, loopguard._guard
gc.callbacks.remove(watch)
print("IN LOADS", in_loads, "TOTAL", total[0], "ENABLED", gc.isenabled())
"""
        + PRINT_LOADED
    )
    assert len(_loaded(out)) > 10  # many modules were loaded...
    line = next(ln for ln in out.splitlines() if ln.startswith("IN LOADS"))
    assert line.startswith("IN LOADS [] TOTAL "), line  # ...none with the collector running
    assert int(line.split()[-3]) > 0  # the collector ran around them (the test can see it)
    assert line.endswith("ENABLED True")


def test_a_collector_the_program_turned_off_stays_off():
    out = _python(
        """
        import gc
        gc.disable()
        import loopguard.plugin, loopguard._guard
        print("ENABLED", gc.isenabled())
        """
    )
    assert "ENABLED False" in out


def test_the_plugin_registers_with_the_collector_paused_and_leaves_it_running(pytester):
    """Loading the plugin and registering it with pytest (``-p loopguard``) lets no collection
    run, with the young generation's threshold at 10 objects (one more plugin, loaded first,
    watches); the collector is on for the tests, and collects there."""
    pytester.syspathinsert()
    pytester.makepyfile(
        watchgc="""
        import gc, sys

        during = []

        def watch(phase, info):
            # A collection inside the registration: below loopguard's hook, in pytest's import
            # of the plugin (the hook's own first lines may see one, before the pause).
            if phase != "start":
                return
            f = sys._getframe(0).f_back
            inside = False
            while f is not None:
                if f.f_code.co_name == "import_plugin":
                    inside = True
                if f.f_code.co_name == "pytest_addhooks" and "loopguard" in f.f_code.co_filename:
                    if inside:
                        during.append(info["generation"])
                    return
                f = f.f_back

        gc.set_threshold(10)
        gc.callbacks.append(watch)

        def pytest_configure(config):
            print("DURING REGISTRATION", len(during))
        """,
        test_it="""
        import gc

        def test_collector():
            assert gc.isenabled()
            class Cycle:
                pass
            c = Cycle()
            c.me = c
            del c
            assert gc.collect() >= 1
        """,
    )
    result = pytester.runpytest_subprocess("-p", "watchgc", "-p", "loopguard", "-s")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["DURING REGISTRATION 0"])
