"""Code to run right after a module is imported: asyncio's, uvloop's and trio's
instrumentation, the ASGI servers' and frameworks' request notes (``python -m loopguard
run``)."""

from __future__ import annotations

import importlib.abc
import importlib.util
import threading
from collections.abc import Callable
from types import ModuleType
from typing import Any, Optional

__all__ = ["PostImportFinder"]

After = Callable[[ModuleType], None]


class PostImportFinder(importlib.abc.MetaPathFinder):
    """A meta path finder that finds nothing itself: when a module that ``after(name)`` answers
    for is imported, it wraps the module's loader so that the answer is called with the module
    right after the module's code has run. Put it first on ``sys.meta_path``."""

    def __init__(self, after: Callable[[str], Optional[After]]) -> None:
        self._after = after
        self._finding = threading.local()

    def find_spec(self, fullname, path=None, target=None):  # type: ignore[no-untyped-def]
        after = self._after(fullname)
        if after is None or getattr(self._finding, "name", None):
            return None
        # The real spec, from the finders after this one (not this one again).
        self._finding.name = fullname
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            self._finding.name = None
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return None
        spec.loader = _Loader(spec.loader, after)
        return spec


class _Loader(importlib.abc.Loader):
    def __init__(self, inner: Any, after: After) -> None:
        self._inner = inner
        self._after = after

    def create_module(self, spec):  # type: ignore[no-untyped-def]
        return self._inner.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._inner.exec_module(module)
        self._after(module)

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        return getattr(self._inner, name)
