"""Which interpreters loopguard can watch, decided once, before its native module is loaded.

Where it cannot (free-threaded CPython, other implementations), loopguard is *inactive*: the
package imports without its native module (see :mod:`loopguard._inactive`), the plugin loads,
accepts its options and markers and says in the report header why it watches nothing, and
``guard()``, ``offload_check()`` and ``expect_block()`` warn once and run their body. A suite
that opts in to loopguard thus runs on every interpreter, with its own outcome.
"""

from __future__ import annotations

import sys
import warnings
from typing import Optional

from ._errors import LoopguardInactiveWarning


def _gil_disabled_build() -> bool:
    """True on a free-threaded build (``Py_GIL_DISABLED``). There is none before 3.13, where
    the build configuration is read only if something loaded it already: loading it costs a
    few milliseconds of every run's start-up."""
    if sys.version_info < (3, 13) and "sysconfig" not in sys.modules:
        return False
    import sysconfig

    return bool(sysconfig.get_config_var("Py_GIL_DISABLED"))


def unsupported_reason(
    implementation: str | None = None, gil_disabled: bool | None = None
) -> str | None:
    """Why loopguard cannot watch event loops on this interpreter, or ``None`` when it can.

    Free-threaded CPython (3.14t) is one: loopguard's watchdog and its GIL-free stack reader
    are built on the GIL's rules (who holds it, what a thread may touch while it waits), its
    abi3 native module does not load there, and a native module that does not declare itself
    free-threading safe makes CPython turn the GIL back on for the whole process, which would
    change what the code under test does.
    """
    if implementation is None:
        implementation = sys.implementation.name
    if gil_disabled is None:
        gil_disabled = _gil_disabled_build()
    if implementation != "cpython":
        return f"loopguard runs on CPython only, not on {implementation}"
    if gil_disabled:
        return (
            f"free-threaded CPython ({sys.version.split()[0]}, Py_GIL_DISABLED) is not supported: "
            "loopguard's watchdog judges blocks by who holds the GIL, and loading its native "
            "module would turn the GIL back on for the whole process. Run the suite under "
            "loopguard with the regular (GIL) build of the same version"
        )
    return None


INACTIVE: Optional[str] = unsupported_reason()
"""Why loopguard watches nothing in this process, or ``None``: decided once, when the package
is first imported (the native module is loaded, or replaced, accordingly)."""

_warned = [False]


def replace_native() -> None:
    """Put a stand-in for the native module in its place (``loopguard._native``), so that the
    package and the plugin import where the module cannot load; called once, by the package,
    when ``INACTIVE``. The stand-in has what importing and exiting touch (no ``EpollProxy``, a
    fork hook and ``stop`` that do nothing); anything else raises ``AttributeError`` with the
    reason: no inactive path reaches it."""
    import types

    reason = INACTIVE

    def missing(name: str) -> object:
        raise AttributeError(f"loopguard._native.{name}: the native module is not loaded: {reason}")

    native = types.ModuleType("loopguard._native", "loopguard's native module, not loaded")
    native.__getattr__ = missing  # type: ignore[method-assign]
    native.stop = native.after_fork_child = lambda: None  # type: ignore[attr-defined]
    sys.modules[native.__name__] = native
    package = sys.modules.get("loopguard")
    if package is not None:
        package._native = native  # type: ignore[attr-defined]


def warn_inactive(what: str, stacklevel: int = 2) -> None:
    """Warn, once per process, that ``what`` runs its body unwatched (``INACTIVE`` says why);
    ``stacklevel`` as for :func:`warnings.warn`, counted from the caller."""
    if _warned[0]:
        return
    _warned[0] = True
    warnings.warn(
        LoopguardInactiveWarning(
            f"loopguard is inactive, {what} runs its body without watching the event loop: "
            f"{INACTIVE}"
        ),
        stacklevel=stacklevel + 1,
    )
