import os

import pytest

pytest_plugins = ["pytester"]

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


# Written into every pytester session: keeps pytest-asyncio quiet and predictable, and the
# order of tests as written (pytest-randomly, when installed, is tested on its own).
INI = """
[pytest]
asyncio_default_fixture_loop_scope = function
addopts = -p no:randomly
"""


def line(pytester, marker, filename="test_it.py"):
    """The number of the first line of ``filename`` (in the pytester dir) containing ``marker``."""
    lines = (pytester.path / filename).read_text().splitlines()
    return next(i for i, text in enumerate(lines, 1) if marker in text)
