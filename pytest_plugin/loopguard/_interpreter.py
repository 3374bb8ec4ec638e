"""Which interpreters loopguard runs on, checked before its native module is loaded."""

from __future__ import annotations

import sys
import sysconfig


def unsupported_reason(
    implementation: str | None = None, gil_disabled: bool | None = None
) -> str | None:
    """Why loopguard cannot run on this interpreter, or ``None`` when it can.

    Free-threaded CPython (3.14t) is refused: loopguard's watchdog and its GIL-free stack reader
    are built on the GIL's rules (who holds it, what a thread may touch while it waits), and a
    native module that does not declare itself free-threading safe makes CPython turn the GIL
    back on for the whole process, which would change what the code under test does.
    """
    if implementation is None:
        implementation = sys.implementation.name
    if gil_disabled is None:
        gil_disabled = bool(sysconfig.get_config_var("Py_GIL_DISABLED"))
    if implementation != "cpython":
        return f"loopguard runs on CPython only, not on {implementation}"
    if gil_disabled:
        return (
            "loopguard does not support free-threaded CPython builds "
            f"({sys.version.split()[0]}, Py_GIL_DISABLED): its watchdog judges blocks by who "
            "holds the GIL, and loading it would turn the GIL back on for the whole process. "
            "Run the suite under loopguard with the regular (GIL) build of the same version"
        )
    return None


def check() -> None:
    """Raise ``ImportError`` with the reason when loopguard cannot run here."""
    reason = unsupported_reason()
    if reason is not None:
        raise ImportError(reason)
