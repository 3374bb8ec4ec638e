"""loopguard: fail a test when it blocks the asyncio event loop, and name the line that did it.

Use it as a pytest plugin (``pytest -p loopguard``) or, without the plugin, as a context
manager or decorator::

    with loopguard.guard(threshold="50ms"):
        asyncio.run(main())

``-p loopguard`` (or ``pytest_plugins = ["loopguard"]``) registers this package as a plugin, and
pytest then registers :mod:`loopguard.plugin`, the hooks, from ``pytest_plugins`` below.
"""

from importlib import metadata as _metadata

from . import _interpreter

_interpreter.check()  # before anything loads the native module

from ._errors import LoopBlockedError, LoopBlockedWarning, OffloadError  # noqa: E402
from ._events import BlockEvent, Frame, Sample  # noqa: E402
from ._guard import guard  # noqa: E402
from ._offload import OffloadCheck, ThreadActivity, offload_check  # noqa: E402

pytest_plugins = ["loopguard.plugin"]

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
    "offload_check",
]
