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
has no assertion to rewrite; the package's other modules are imported past the rewriter
(:class:`_OwnModules`), with Python's own bytecode cache, and with the cyclic garbage collector
paused while each of them runs (:class:`_CollectorPaused`).

Importing the package loads only this module, the errors and the interpreter check: the rest
of the public API is imported on first use, and the plugin imports the report, HTML, failure
text and fixture modules only when a run needs them.
"""

import gc as _gc
import sys as _sys
from importlib.machinery import PathFinder as _PathFinder
from importlib.machinery import SourceFileLoader as _SourceFileLoader
from typing import Any


class _OwnModules:
    """Imports loopguard's submodules as Python itself would, ahead of pytest's assertion
    rewriter (``-p loopguard`` marks the package for it): the rewriter compiles a module from
    source again at every run wherever its own bytecode cache cannot be written (read-only
    site-packages, PYTHONDONTWRITEBYTECODE), and loopguard's modules have no test assertions
    for it to rewrite. Only pure-Python submodules, each run with the garbage collector paused
    (:class:`_OwnModuleLoader`); the native module is found as before, and loaded while the
    module that imports it runs."""

    loopguard_own_modules = True

    @staticmethod
    def find_spec(name: str, path: object = None, target: object = None) -> object:
        if path is None or not name.startswith("loopguard."):
            return None
        spec = _PathFinder.find_spec(name, path)  # type: ignore[arg-type]
        if spec is None or type(spec.loader) is not _SourceFileLoader:
            return None
        spec.loader = _OwnModuleLoader(spec.loader.name, spec.loader.path)
        return spec


class _OwnModuleLoader(_SourceFileLoader):
    """Python's loader, which runs a module with the cyclic garbage collector paused
    (:class:`_CollectorPaused`)."""

    def exec_module(self, module: Any) -> None:
        with _CollectorPaused():
            super().exec_module(module)


class _CollectorPaused:
    """Pauses the cyclic garbage collector while loopguard loads itself: its modules, and its
    plugin's registration with pytest. Both make almost nothing but objects that live as long
    as the process (functions, classes, the tuples of their code, pytest's records of the
    hooks), so a collection in the middle of them has nothing to free; but each of those
    objects counts towards the next collection, and they are some 1,600: two or three young
    collections, by which the collector's schedule for the code under test would move (in a
    small suite, enough to bring a full collection, over ten milliseconds with the GIL held,
    into one of its tests). Paused, they cost one young collection at most, when the collector
    resumes. Nested pauses leave the resuming to the outermost; a collector the program turned
    off stays off."""

    def __enter__(self) -> None:
        self.running = _gc.isenabled()
        _gc.disable()

    def __exit__(self, *exc: object) -> None:
        if self.running:
            _gc.enable()


if not any(getattr(f, "loopguard_own_modules", False) for f in _sys.meta_path):
    _sys.meta_path.insert(0, _OwnModules())  # type: ignore[arg-type]

# Past that import hook: these two are not compiled again by pytest's.
from . import _interpreter  # noqa: E402

if _interpreter.INACTIVE is not None:  # free-threaded CPython: before anything imports it
    _interpreter.replace_native()

from ._errors import (  # noqa: E402
    LoopBlockedError,
    LoopBlockedWarning,
    LoopguardInactiveWarning,
    OffloadError,
)

pytest_plugins = ["loopguard.plugin"]


def pytest_addhooks(pluginmanager: Any) -> None:
    """Registers :mod:`loopguard.plugin` as soon as pytest registers this package (``-p
    loopguard``, ``pytest_plugins = ["loopguard"]``): from ``pytest_plugins`` above, pytest
    would first read every installed distribution's entry points once more, for one named
    ``loopguard.plugin`` (8 M instructions at every start-up); this asks for the module
    itself, and pytest then finds it registered. ``pytest_plugins`` remains for a package
    registered before pytest calls this hook (``pytest.main(plugins=[loopguard])``). The
    collector is paused meanwhile (:class:`_CollectorPaused`)."""
    with _CollectorPaused():
        pluginmanager.import_plugin("loopguard.plugin")


__version__ = "0.1.0"
"""The distribution's version: Cargo.toml's, which maturin writes into the metadata (a test
holds the three equal). A constant, so that importing loopguard reads no metadata."""

# The rest of the public API is imported when first used (``loopguard.guard``, ``from loopguard
# import BlockEvent``): ``import loopguard`` and ``-p loopguard`` load only what they need.
_LAZY = {
    "BlockEvent": "_events",
    "Frame": "_events",
    "Sample": "_events",
    "ThreadActivity": "_offload",
    "guard": "_guard" if _interpreter.INACTIVE is None else "_inactive",
    "OffloadCheck": "_offload" if _interpreter.INACTIVE is None else "_inactive",
    "offload_check": "_offload" if _interpreter.INACTIVE is None else "_inactive",
}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    if isinstance(value, type) or callable(value):
        value.__module__ = __name__
    globals()[name] = value
    return value


for _public in (LoopBlockedError, LoopBlockedWarning, LoopguardInactiveWarning, OffloadError):
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
