import dataclasses
import os

import pytest
from loopguard import _native

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


@dataclasses.dataclass(frozen=True)
class InnerSession:
    """Runs real pytest sessions, in a subprocess, in ``pytester``'s directory.

    A test module sets what all its sessions share in a module-level ``INNER`` dict of these
    fields (or, when that takes code, a fixture of its own named ``inner`` that calls
    ``using(...)``); each ``run`` writes the ini and the test file, then runs pytest.
    """

    pytester: pytest.Pytester
    header: str = ""  # put before the source of every test_it.py
    ini: str = ""  # added to INI
    args: tuple[str, ...] = ()  # pytest arguments given before each run's own
    files: dict[str, str] = dataclasses.field(default_factory=dict)  # more files, by name

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

    def run(self, source, *args, ini="", plugin=True, keep_order=True, **files):
        """``write`` the files, then run pytest in a subprocess with loopguard (unless
        ``plugin`` is false), the module's ``args`` and then these."""
        self.write(source, ini, keep_order, **files)
        plugin_args = ("-p", "loopguard") if plugin else ()
        return self.pytester.runpytest_subprocess(*plugin_args, *self.args, *args)

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


@pytest.fixture
def inner(pytester, request):
    """An InnerSession with what the test module shares: its ``INNER`` dict, if any."""
    return InnerSession(pytester).using(**getattr(request.module, "INNER", {}))
