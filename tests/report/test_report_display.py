"""How a failure reads: library frames folded in the stack, the short summary line, colour."""

import json
import textwrap

import pytest

# Two installed-looking packages (their directory is named site-packages, so loopguard counts
# them as libraries, not as the project's code). ``outerlib`` calls back into the project
# through three frames of two packages; ``innerlib`` blocks five frames deep.
OUTERLIB = """
import helperlib

def call(fn):
    return _dispatch(fn)

def _dispatch(fn):
    return helperlib.invoke(fn)
"""
HELPERLIB = """
def invoke(fn):
    return fn()
"""
INNERLIB = """
import time

def wait(seconds):
    return _a(seconds)

def _a(seconds):
    return _b(seconds)

def _b(seconds):
    return _c(seconds)

def _c(seconds):
    return _sleep(seconds)

def _sleep(seconds):
    time.sleep(seconds)  # innerlib sleeps
"""
TEST = """
import pytest
import innerlib
import outerlib

def handler():
    innerlib.wait(0.3)  # the project calls the library

@pytest.mark.asyncio
async def test_blocks():
    outerlib.call(handler)  # the test calls into a library
"""


@pytest.fixture
def inner(inner, pytester):
    libs = pytester.path / "lib" / "site-packages"
    for name, source in (("outerlib", OUTERLIB), ("helperlib", HELPERLIB), ("innerlib", INNERLIB)):
        (libs / name).mkdir(parents=True, exist_ok=True)
        (libs / name / "__init__.py").write_text(textwrap.dedent(source))
    return inner.using(ini="pythonpath = lib/site-packages\n", args=("-p", "no:cacheprovider"))


def frame(name, function):
    return f'    File "*lib/site-packages/{name}/__init__.py", line *, in {function}'


def test_library_runs_between_project_frames_fold_into_one_line(inner):
    result = inner.run(TEST)
    result.assert_outcomes(failed=1)
    lib = "lib/site-packages/innerlib/__init__.py"
    result.stdout.fnmatch_lines(
        [
            "  Python stack of the loop thread (most recent call last):",
            "    ... * outer frames (test runner and event loop) not shown ...",
            f'    File "test_it.py", line {inner.line("# the test calls")}, in test_blocks',
            "      outerlib.call(handler)  # the test calls into a library",
            "    ... 3 frames in outerlib, helperlib ...",
            f'    File "test_it.py", line {inner.line("# the project calls")}, in handler',
            "      innerlib.wait(0.3)  # the project calls the library",
            # The entry into the library, then its innermost frames: where it blocked.
            frame("innerlib", "wait"),
            "      return _a(seconds)",
            "    ... 2 frames in innerlib ...",
            frame("innerlib", "_c"),
            "      return _sleep(seconds)",
            frame("innerlib", "_sleep"),
            "      time.sleep(seconds)  # innerlib sleeps",
            "  loop thread 'MainThread'*",
        ],
        consecutive=True,
    )
    out = result.stdout.str()
    for hidden in ("in _dispatch", "in invoke", "in _a", "in _b"):
        assert hidden not in out
    assert f'File "{lib}", line' in out


@pytest.mark.parametrize(
    "how",
    [
        ("--loopguard-stack=full",),
        ("-vv",),
        ("--loopguard-stack", "full", "-q"),
    ],
)
def test_full_stack_shows_every_frame(inner, how):
    result = inner.run(TEST, *how)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*outerlib.call(handler)  # the test calls into a library",
            frame("outerlib", "call"),
            frame("outerlib", "_dispatch"),
            frame("helperlib", "invoke"),
            '    File "test_it.py", line *, in handler',
            frame("innerlib", "wait"),
            frame("innerlib", "_a"),
            frame("innerlib", "_b"),
            frame("innerlib", "_c"),
            frame("innerlib", "_sleep"),
        ]
    )
    result.stdout.no_fnmatch_line("*... * frames in *")
    # Everything: the test runner's frames too.
    result.stdout.no_fnmatch_line("*outer frames (test runner and event loop) not shown*")
    result.stdout.fnmatch_lines(["*_pytest/python.py*"])


def test_stack_setting_from_ini_and_environment(inner, monkeypatch):
    result = inner.run(TEST, ini="loopguard_stack = full\n")
    result.stdout.fnmatch_lines(
        ["loopguard: full stacks (from loopguard_stack)", frame("innerlib", "_b")]
    )
    monkeypatch.setenv("LOOPGUARD_STACK", "short")  # the environment wins over the ini file
    result = inner.run(TEST, ini="loopguard_stack = full\n")
    result.stdout.fnmatch_lines(["    ... 2 frames in innerlib ..."])


@pytest.mark.parametrize(
    "args, env, expected",
    [
        (
            ["--loopguard-stack=long"],
            {},
            "*loopguard: invalid value for --loopguard-stack: 'long' (from the command line); "
            "expected one of short, full",
        ),
        (
            [],
            {"LOOPGUARD_STACK": ""},
            "*loopguard: invalid value for LOOPGUARD_STACK: '' (from the environment); "
            "expected one of short, full",
        ),
    ],
)
def test_invalid_stack_value_is_a_usage_error(inner, monkeypatch, args, env, expected):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    result = inner.run(TEST, *args, inprocess=True)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([expected])


def test_invalid_stack_value_in_the_ini_file_names_it(inner):
    result = inner.run(TEST, ini="loopguard_stack = everything\n", inprocess=True)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "*loopguard: invalid value for loopguard_stack: 'everything' (from the config file "
            "*tox.ini); expected one of short, full"
        ]
    )


def test_json_report_keeps_every_frame(pytester, inner):
    result = inner.run(TEST, "--loopguard-json=report.json")
    result.assert_outcomes(failed=1)
    data = json.loads((pytester.path / "report.json").read_text())
    functions = [f["function"] for f in data["events"][0]["stack"]]
    for name in ("call", "_dispatch", "invoke", "handler", "wait", "_a", "_b", "_c", "_sleep"):
        assert name in functions


# --- the short summary line -------------------------------------------------------------------

SLOW = """
import time
import pytest

def scan():
    time.sleep(0.3)  # blocking line

@pytest.mark.asyncio
async def test_upload():
    scan()
"""


def summary(inner, *args):
    result = inner.run(None, *args, test_app=SLOW)
    result.assert_outcomes(failed=1)
    return [x for x in result.outlines if x.startswith("FAILED ")]


def test_short_summary_names_the_site_when_cut_to_80_columns(inner, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    (failed,) = summary(inner)
    site = f"test_app.py:{inner.line('# blocking line', 'test_app.py')} in scan"
    assert len(failed) <= 80, failed
    assert failed.startswith("FAILED test_app.py::test_upload - loopguard: "), failed
    pytest.LineMatcher([failed]).fnmatch_lines([f"* - loopguard: * at {site}*"])


PYTEST_8 = int(pytest.__version__.split(".")[0]) >= 8


@pytest.mark.parametrize("how", ["CI", "-vv"])
def test_short_summary_is_whole_on_ci_and_with_vv(inner, monkeypatch, how):
    monkeypatch.setenv("COLUMNS", "80")
    if how == "CI":
        monkeypatch.setenv("CI", "true")
        (failed,) = summary(inner)
    else:
        (failed,) = summary(inner, "-vv")
    site = f"test_app.py:{inner.line('# blocking line', 'test_app.py')} in scan"
    whole = (
        f"FAILED test_app.py::test_upload - loopguard: * at {site} "
        "(event loop blocked, threshold 100 ms)"
    )
    if how == "-vv" and not PYTEST_8:
        # pytest 7 cuts the line with -vv too: the site is still there.
        assert len(failed) <= 80, failed
        whole = f"FAILED test_app.py::test_upload - loopguard: * at {site}*"
    pytest.LineMatcher([failed]).fnmatch_lines([whole])


# --- colour ---------------------------------------------------------------------------------

ESC = "\x1b["


def coloured(inner, *args):
    result = inner.run(None, "--loopguard-json=report.json", *args, test_app=SLOW)
    result.assert_outcomes(failed=1)
    report = (inner.pytester.path / "report.json").read_text()
    assert ESC not in report and "\\u001b" not in report
    return result.outlines


def test_colour_follows_pytest_when_asked_for(inner):
    lines = coloured(inner, "--color=yes")
    # The report's first line in red and bold, the severity row in its colour (MEDIUM: yellow).
    head = next(x for x in lines if "loopguard: event loop blocked for" in x)
    assert head.startswith(ESC) and "\x1b[31m" in head and "\x1b[1m" in head, repr(head)
    row = next(x for x in lines if "MEDIUM" in x)
    assert "\x1b[33m" in row, repr(row)


@pytest.mark.parametrize("how", ["piped", "--color=no", "NO_COLOR"])
def test_no_colour_when_piped_or_turned_off(inner, monkeypatch, how):
    args = []
    if how == "--color=no":
        monkeypatch.setenv("PY_COLORS", "1")  # the command line wins
        args = ["--color=no"]
    elif how == "NO_COLOR":
        monkeypatch.setenv("NO_COLOR", "1")
    lines = coloured(inner, *args)
    assert any("MEDIUM" in x for x in lines)
    assert not [x for x in lines if ESC in x]


def test_py_colors_turns_colour_on_when_piped(inner, monkeypatch):
    monkeypatch.setenv("PY_COLORS", "1")
    lines = coloured(inner)
    row = next(x for x in lines if "MEDIUM" in x)
    assert "\x1b[33m" in row, repr(row)
