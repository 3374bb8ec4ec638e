"""Interpreters loopguard cannot watch: decided before the native module is loaded, which is then
not loaded at all (the end-to-end behaviour is in tests/session/test_free_threaded.py)."""

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


def test_on_a_free_threaded_build_the_package_imports_inactive_without_its_native_module():
    # A free-threaded build, as sysconfig reports it, where the abi3 module would not load.
    script = textwrap.dedent(
        """
        import sys, sysconfig
        real = sysconfig.get_config_var
        sysconfig.get_config_var = lambda name: 1 if name == "Py_GIL_DISABLED" else real(name)

        class NoNative:
            def find_spec(self, name, path=None, target=None):
                if name == "loopguard._native":
                    raise ImportError("the abi3 module does not load on this build")

        sys.meta_path.insert(0, NoNative())
        import loopguard, loopguard.plugin, loopguard._cli
        from loopguard import _interpreter, _native
        print("inactive:", _interpreter.INACTIVE)
        print("stand-ins:", type(loopguard.guard()).__mro__[1].__module__,
              type(loopguard.offload_check()).__mro__[1].__module__)
        try:
            _native.start
        except AttributeError as e:
            print("tripwire:", e)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    assert "inactive: free-threaded CPython (" in out
    assert "stand-ins: loopguard._guard loopguard._offload" in out
    assert "tripwire: loopguard._native.start: the native module is not loaded: free-thr" in out


def test_the_version_comes_from_cargo_toml():
    cargo = (Path(__file__).parents[2] / "Cargo.toml").read_text()
    want = re.search(r'^version = "([^"]+)"', cargo, re.M).group(1)
    assert loopguard.__version__ == want
