"""Where a source file is: the project's code or a library's, its module and package name, and
its path as a report shows it."""

from __future__ import annotations

import functools
import os
import site
import sys
from pathlib import Path
from typing import Optional

__all__ = [
    "PKG_DIR",
    "display_path",
    "is_user_file",
    "is_wrapper",
    "library_path",
    "modules",
    "package_of",
    "relative_path",
    "shown_path",
]

PKG_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
"""loopguard's own directory: its frames are never the project's."""

_PKG_REAL = os.path.realpath(PKG_DIR) + os.sep
"""The same, symbolic links resolved (a package directory linked into site-packages)."""


@functools.cache
def _library_dirs() -> tuple[str, ...]:
    """The standard library's and site-packages' directories, longest first (read at the first
    question: the build configuration costs a few milliseconds to load)."""
    import sysconfig

    dirs = set()
    paths = sysconfig.get_paths()
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        if paths.get(key):
            dirs.add(os.path.realpath(paths[key]))
    try:
        for d in site.getsitepackages():
            dirs.add(os.path.realpath(d))
    except AttributeError:  # virtualenv's old site.py
        pass
    return tuple(sorted((d.rstrip(os.sep) + os.sep for d in dirs), key=len, reverse=True))


_user_cache: dict[str, bool] = {}


def is_user_file(filename: str) -> bool:
    """True for code of the project under test: not loopguard, the stdlib or site-packages."""
    cached = _user_cache.get(filename)
    if cached is not None:
        return cached
    if filename.startswith("<"):
        result = False
    else:
        real = os.path.realpath(filename)
        result = not (
            real.startswith((PKG_DIR, _PKG_REAL))
            or any(real.startswith(d) for d in _library_dirs())
            or f"{os.sep}site-packages{os.sep}" in real
            or f"{os.sep}dist-packages{os.sep}" in real
        )
    _user_cache[filename] = result
    return result


def package_of(filename: str) -> str:
    """The package a library file belongs to: the top-level name under site-packages
    (``httpx``), the standard library module (``asyncio``, ``json``), or the file's name."""
    if filename.startswith("<"):
        # <frozen importlib._bootstrap>, <string>
        inner = filename.strip("<>").split()[-1]
        return inner.split(".", 1)[0] or filename
    real = os.path.realpath(filename)
    if real.startswith((PKG_DIR, _PKG_REAL)):
        return "loopguard"
    for marker in (f"{os.sep}site-packages{os.sep}", f"{os.sep}dist-packages{os.sep}"):
        if marker in real:
            return _top_name(real.rsplit(marker, 1)[1])
    for d in _library_dirs():
        if real.startswith(d):
            return _top_name(real[len(d) :])
    return os.path.basename(filename)


def _top_name(relpath: str) -> str:
    top = relpath.split(os.sep, 1)[0]
    for suffix in (".py", ".pyc"):
        top = top.removesuffix(suffix)
    return top.split(".", 1)[0] if top.endswith(".so") else top


def display_path(filename: str) -> str:
    """``filename`` relative to the current directory, or as it is when outside it."""
    try:
        rel = os.path.relpath(filename)
    except ValueError:
        return filename
    return filename if rel.startswith("..") else rel


@functools.lru_cache(maxsize=4096)
def library_path(filename: str) -> Optional[str]:
    """A library file's path inside its installation directory, ``/``-separated, as an import
    names it (``asyncio/events.py``, ``requests/sessions.py``, ``loopguard/_runtime.py``);
    ``None`` for the project's files and names in angle brackets (``<string>``)."""
    if filename.startswith("<") or is_user_file(filename):
        return None
    real = os.path.realpath(filename)
    rel = None
    for pkg in (PKG_DIR, _PKG_REAL):
        if real.startswith(pkg):
            rel = os.path.join("loopguard", real[len(pkg) :])
    for marker in (f"{os.sep}site-packages{os.sep}", f"{os.sep}dist-packages{os.sep}"):
        if rel is None and marker in real:
            rel = real.rsplit(marker, 1)[1]
    for d in _library_dirs():
        if rel is None and real.startswith(d):
            rel = real[len(d) :]
    if rel is None:
        return None
    parts = rel.split(os.sep)
    if parts[0] == "lib-dynload":
        parts = parts[1:]
    return "/".join(parts)


def shown_path(filename: str) -> str:
    """``filename`` as a report names a place: a project file relative to the current
    directory (:func:`display_path`), a library's or the standard library's as an import
    names it (:func:`library_path`: ``asyncio/events.py``), never by the interpreter's
    installation directory."""
    return library_path(filename) or display_path(filename)


# Frames that another tool puts between the code and a blocking function it wraps (to detect
# blocking calls by patching them): a report looks through them to the wrapped call. Each entry
# is the end of a file's path and the wrapper's function names (qualified on Python 3.11+).
_WRAPPERS: tuple[tuple[str, frozenset[str]], ...] = (
    # blockbuster: _wrap_blocking's inner function replaces time.sleep, socket and file methods,
    # sqlite3, locks...
    ("blockbuster/blockbuster.py", frozenset({"wrapper", "_wrap_blocking.<locals>.wrapper"})),
)


@functools.lru_cache(maxsize=1024)
def is_wrapper(filename: str, function: str) -> bool:
    """True for a frame of a wrapper that a blocking-call detector put around the function it
    called (see ``_WRAPPERS``): not the blocking operation itself."""
    path = filename.replace(os.sep, "/")
    return any(
        path.endswith("/" + end) and function in names
        for end, names in _WRAPPERS
        if not is_user_file(filename)
    )


@functools.lru_cache(maxsize=4096)
def relative_path(filename: str, root: Path) -> str:
    """``filename`` relative to ``root`` with ``/`` separators, or absolute when outside it."""
    if filename.startswith("<"):
        return filename
    try:
        rel = os.path.relpath(os.path.realpath(filename), os.path.realpath(root))
    except ValueError:
        return filename
    if rel.startswith(".."):
        return Path(filename).as_posix()
    return rel.replace(os.sep, "/")


class _Modules:
    """Maps source file names to dotted module names (``app/x.py`` -> ``app.x``)."""

    def __init__(self) -> None:
        self._by_file: dict[str, str] = {}
        self._cache: dict[str, Optional[str]] = {}
        self._seen = -1

    def name(self, filename: str) -> Optional[str]:
        if filename in self._cache:
            return self._cache[filename]
        real = os.path.realpath(filename)
        if len(sys.modules) != self._seen:
            self._seen = len(sys.modules)
            for mod_name, mod in list(sys.modules.items()):
                f = getattr(mod, "__file__", None)
                if isinstance(f, str):
                    self._by_file.setdefault(os.path.realpath(f), mod_name)
        name = self._by_file.get(real) or self._from_sys_path(real)
        self._cache[filename] = name
        return name

    @staticmethod
    def _from_sys_path(real: str) -> Optional[str]:
        if not real.endswith(".py"):
            return None
        best = None
        for entry in sys.path:
            base = os.path.realpath(entry or os.getcwd()) + os.sep
            if real.startswith(base) and (best is None or len(base) > len(best)):
                best = base
        if best is None:
            return None
        parts = real[len(best) : -len(".py")].split(os.sep)
        if parts[-1] == "__init__":
            parts.pop()
        return ".".join(parts) if parts and all(p.isidentifier() for p in parts) else None


modules = _Modules()
