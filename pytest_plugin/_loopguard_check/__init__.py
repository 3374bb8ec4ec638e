"""loopguard's name check: a pytest plugin that is always loaded (the ``pytest11`` entry point
``loopguard-name-check``) and makes sure that asking for ``loopguard`` got loopguard.

pytest resolves ``-p NAME`` (and each name in ``pytest_plugins`` or ``PYTEST_PLUGINS``) to an
installed ``pytest11`` entry point of that name before it looks for a module of that name, and
it loads every installed entry point at start-up. Another distribution whose pytest plugin is
named ``loopguard`` (fastapi-loopguard's is), or a ``loopguard.py`` of the project, is then what
``loopguard`` means to pytest: loopguard never runs and a test that blocks the loop passes. This
plugin turns that into a usage error naming what was loaded instead and the fix: the spelling
``-p loopguard.plugin``, which names loopguard's plugin module itself, or uninstalling the other
distribution.

It imports only pytest and the standard library (never loopguard, whose import loads its
native module) and does nothing unless loopguard was asked for by its plain name: installing
loopguard changes no session that does not opt in. It cannot run when plugin autoloading is off
(``PYTEST_DISABLE_PLUGIN_AUTOLOAD``, ``--disable-plugin-autoload``); ``-p loopguard.plugin`` is
the spelling that needs no check.
"""

from __future__ import annotations

import os
import sys
import types
from typing import Any

import pytest

__all__ = ["pytest_configure"]

NAME = "loopguard"
PLUGIN_MODULE = "loopguard.plugin"


def _names(spec: Any) -> list[str]:
    """The plugin names of a ``pytest_plugins`` value, as pytest reads it (a comma-separated
    string or a sequence of names)."""
    if spec is None or isinstance(spec, types.ModuleType):
        return []
    if isinstance(spec, str):
        return [s.strip() for s in spec.split(",") if s.strip()]
    try:
        return [str(s).strip() for s in spec]
    except TypeError:
        return []


def _requests(config: pytest.Config, loaded: object) -> list[str]:
    """Where the session asked for the plugin named ``loopguard``, as the user wrote it."""
    found = []
    # Every -p of the session: the command line, addopts and PYTEST_ADDOPTS.
    if any(str(p).strip() == NAME for p in getattr(config.option, "plugins", None) or ()):
        found.append("-p loopguard")
    if NAME in _names(os.environ.get("PYTEST_PLUGINS")):
        found.append("PYTEST_PLUGINS=loopguard")
    # The conftest files and plugins whose pytest_plugins name it (pytest loads them all before
    # pytest_configure: a non-top-level conftest may not set pytest_plugins).
    for plugin in config.pluginmanager.get_plugins():
        if plugin is loaded or not isinstance(plugin, types.ModuleType):
            continue
        if NAME in _names(getattr(plugin, "pytest_plugins", None)):
            where = getattr(plugin, "__file__", None) or plugin.__name__
            try:
                where = os.path.relpath(where, config.invocation_params.dir)
            except ValueError:  # another drive
                pass
            found.append(f'pytest_plugins = ["loopguard"] in {where}')
    return found


def _describe(config: pytest.Config, loaded: object) -> tuple[str, str | None]:
    """What the name ``loopguard`` loaded, and the distribution it came from (or None)."""
    for plugin, dist in config.pluginmanager.list_plugin_distinfo():
        if plugin is loaded:
            name = dist.project_name
            return f"the pytest plugin of {name} {dist.version}", name
    where = getattr(loaded, "__file__", None)
    module = getattr(loaded, "__name__", None)
    if module is not None:
        return f"the module {module}" + (f" ({where})" if where else ""), None
    return repr(loaded), None


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    pm = config.pluginmanager
    if pm.is_blocked(NAME) or hasattr(config, "workerinput") or config.option.help:
        return  # -p no:loopguard; an xdist worker (its controller checked); --help
    loaded = pm.get_plugin(NAME)
    ours = sys.modules.get(PLUGIN_MODULE)
    if ours is not None and pm.is_registered(ours):
        return  # loopguard's plugin is on, however it was named
    asked = _requests(config, loaded)
    if not asked or loaded is None:
        return
    what, dist = _describe(config, loaded)
    other = f", or uninstall {dist} if this project does not use it" if dist is not None else ""
    raise pytest.UsageError(
        f"loopguard: {' and '.join(asked)} loaded {what}, not loopguard's plugin: "
        f'another plugin is named "{NAME}", so loopguard would guard nothing. Name '
        f"loopguard's plugin module instead: -p {PLUGIN_MODULE} (or pytest_plugins = "
        f'["{PLUGIN_MODULE}"]){other}'
    )
