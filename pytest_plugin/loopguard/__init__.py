"""loopguard: fail a test when it blocks the asyncio event loop, and name the line that did it.

Use it as a pytest plugin (``pytest -p loopguard``) or, without the plugin, as a context
manager or decorator::

    with loopguard.guard(threshold="50ms"):
        asyncio.run(main())

The pytest hooks below are re-exported from :mod:`loopguard.plugin` so that ``-p loopguard``
loads them.
"""

from importlib import metadata as _metadata

from . import _interpreter

_interpreter.check()  # before anything loads the native module

from ._events import BlockEvent, Frame, Sample  # noqa: E402
from ._guard import LoopBlockedError, LoopBlockedWarning, guard  # noqa: E402
from ._offload import OffloadCheck, OffloadError, ThreadActivity, offload_check  # noqa: E402
from .plugin import (  # noqa: E402
    loopguard,
    pytest_addoption,
    pytest_collection_modifyitems,
    pytest_configure,
    pytest_report_header,
    pytest_runtest_call,
    pytest_runtest_makereport,
    pytest_runtest_setup,
    pytest_runtest_teardown,
    pytest_sessionfinish,
    pytest_terminal_summary,
    pytest_unconfigure,
)

try:  # one place for the version: Cargo.toml (maturin writes it into the metadata)
    __version__ = _metadata.version("pytest-loopguard")
except _metadata.PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"

for _public in (
    BlockEvent,
    Frame,
    Sample,
    LoopBlockedError,
    LoopBlockedWarning,
    OffloadCheck,
    OffloadError,
    ThreadActivity,
    guard,
    offload_check,
):
    _public.__module__ = __name__
del _public

__all__ = [
    "BlockEvent",
    "Frame",
    "LoopBlockedError",
    "LoopBlockedWarning",
    "OffloadCheck",
    "OffloadError",
    "Sample",
    "ThreadActivity",
    "__version__",
    "guard",
    "loopguard",
    "offload_check",
    "pytest_addoption",
    "pytest_collection_modifyitems",
    "pytest_configure",
    "pytest_report_header",
    "pytest_runtest_call",
    "pytest_runtest_makereport",
    "pytest_runtest_setup",
    "pytest_runtest_teardown",
    "pytest_sessionfinish",
    "pytest_terminal_summary",
    "pytest_unconfigure",
]
