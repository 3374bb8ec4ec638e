"""loopguard: fail a test when it blocks the asyncio event loop, and name the line that did it.

Use it as a pytest plugin (``pytest -p loopguard``) or, without the plugin, as a context
manager or decorator::

    with loopguard.guard(threshold="50ms"):
        asyncio.run(main())

``-p loopguard`` (or ``pytest_plugins = ["loopguard"]``) registers this package as a plugin, and
pytest then registers :mod:`loopguard.plugin`, the hooks, from ``pytest_plugins`` below;
``-p loopguard.plugin`` registers the hooks directly (the spelling no other distribution's
``loopguard`` entry point can take over).

On an interpreter loopguard cannot watch (free-threaded CPython) the package imports without
its native module and exports stand-ins that warn once and run their body (see
:mod:`loopguard._interpreter`).

PYTEST_DONT_REWRITE: pytest marks the packages of every distribution with a plugin entry point
(loopguard's name check) for assertion rewriting at start-up, and warns about one that was
imported before (a program that imports loopguard, then calls ``pytest.main()``). This module
has no assertion to rewrite.
"""

from importlib import metadata as _metadata

from . import _interpreter

if _interpreter.INACTIVE is not None:  # free-threaded CPython: before anything imports it
    _interpreter.replace_native()

from ._errors import (
    LoopBlockedError,
    LoopBlockedWarning,
    LoopguardInactiveWarning,
    OffloadError,
)
from ._events import BlockEvent, Frame, Sample
from ._offload import ThreadActivity

if _interpreter.INACTIVE is None:
    from ._guard import guard
    from ._offload import OffloadCheck, offload_check
else:  # the same names, which warn once and run their body unwatched
    from ._inactive import OffloadCheck, guard, offload_check

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
    LoopguardInactiveWarning,
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
    "LoopguardInactiveWarning",
    "OffloadCheck",
    "OffloadError",
    "Sample",
    "ThreadActivity",
    "__version__",
    "guard",
    "offload_check",
]
