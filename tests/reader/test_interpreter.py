"""Interpreters loopguard refuses: a clear ImportError before the native module is loaded."""

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import loopguard
from loopguard import _interpreter


def test_the_regular_cpython_build_is_accepted():
    assert _interpreter.unsupported_reason("cpython", gil_disabled=False) is None
    assert _interpreter.unsupported_reason() is None  # the interpreter running this test


def test_free_threaded_and_other_implementations_are_refused_with_the_reason():
    reason = _interpreter.unsupported_reason("cpython", gil_disabled=True)
    assert "free-threaded" in reason and "turn the GIL back on" in reason
    assert "regular (GIL) build" in reason
    assert "not on pypy" in _interpreter.unsupported_reason("pypy", gil_disabled=False)


def test_importing_on_a_free_threaded_build_fails_before_the_native_module_loads():
    # A free-threaded build, as sysconfig reports it.
    script = textwrap.dedent(
        """
        import sys, sysconfig
        real = sysconfig.get_config_var
        sysconfig.get_config_var = lambda name: 1 if name == "Py_GIL_DISABLED" else real(name)
        try:
            import loopguard
        except ImportError as e:
            print("refused:", e)
        print("native loaded:", "loopguard._native" in sys.modules)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    assert "refused: loopguard does not support free-threaded CPython builds" in out
    assert "native loaded: False" in out


def test_the_version_comes_from_cargo_toml():
    cargo = (Path(__file__).parents[2] / "Cargo.toml").read_text()
    want = re.search(r'^version = "([^"]+)"', cargo, re.M).group(1)
    assert loopguard.__version__ == want
