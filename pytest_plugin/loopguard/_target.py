"""The program ``python -m loopguard run`` runs, in its own process (as ``coverage run`` does).

Accepted commands (:func:`resolve_target`):

* ``python -m MODULE ARGS...``, ``python SCRIPT ARGS...``, ``python -c CODE ARGS...``
  (``python``, ``python3``, ``python3.12``, or a path to a Python interpreter; no interpreter
  options before them);
* ``-m MODULE ARGS...``, ``SCRIPT.py ARGS...`` (the interpreter left out);
* a console script of an installed distribution (``uvicorn``, ``hypercorn``, ``gunicorn``),
  run through its entry point, or any file on ``PATH`` that is a Python script (its first line
  names a Python interpreter), run as a script.

Anything else (a shell command, a binary) is a :class:`TargetError` that says so. The program
sees the ``sys.argv`` it would have had, ``__main__`` is its module, and ``sys.path[0]`` is
what the interpreter would have put there.
"""

from __future__ import annotations

import os
import re
import runpy
import shutil
import signal
import sys
import traceback
from dataclasses import dataclass
from importlib import metadata
from typing import Optional

__all__ = ["Outcome", "Target", "TargetError", "resolve_target", "run_target"]

ACCEPTED = (
    "python -m MODULE ..., python SCRIPT.py ..., python -c CODE ..., -m MODULE ..., "
    "SCRIPT.py ..., or a console script of an installed Python package (uvicorn ...)"
)
_PYTHON = re.compile(r"^python(\d+(\.\d+)?)?$")


class TargetError(Exception):
    """A command that cannot be run in-process (the message names it and what is accepted)."""


@dataclass(frozen=True)
class Target:
    kind: str
    """``module``, ``path``, ``code`` or ``entry_point``."""
    name: str
    """The module, the script's path, the code, or the entry point's ``module:attr``."""
    argv: list[str]
    """``sys.argv`` as the program would have it."""


@dataclass(frozen=True)
class Outcome:
    status: int
    signal: Optional[int] = None
    """The signal the program would have died of (an uncaught ``KeyboardInterrupt``)."""


def _is_python(word: str) -> bool:
    base = os.path.basename(word)
    if _PYTHON.match(base):
        return True
    return os.path.isabs(word) and os.path.realpath(word) == os.path.realpath(sys.executable)


def _after_python(command: list[str], shown: str) -> Target:
    if not command:
        raise TargetError(f"{shown!r} needs a module, script or code to run; expected {ACCEPTED}")
    first, rest = command[0], command[1:]
    if first == "-m":
        if not rest:
            raise TargetError(f"'{shown} -m' needs a module name; expected {ACCEPTED}")
        return Target("module", rest[0], [rest[0], *rest[1:]])
    if first == "-c":
        if not rest:
            raise TargetError(f"'{shown} -c' needs code to run; expected {ACCEPTED}")
        return Target("code", rest[0], ["-c", *rest[1:]])
    if first.startswith("-"):
        raise TargetError(
            f"interpreter option {first!r} in {shown} {first} ...: not supported (the program "
            f"runs in loopguard's interpreter); expected {ACCEPTED}"
        )
    return _script(first, rest)


def _script(path: str, rest: list[str]) -> Target:
    if not os.path.isfile(path):
        raise TargetError(f"{path}: no such file; expected {ACCEPTED}")
    return Target("path", os.path.abspath(path), [path, *rest])


def resolve_target(command: list[str]) -> Target:
    """The program ``command`` names; raises :class:`TargetError`."""
    first, rest = command[0], command[1:]
    if first in ("-m", "-c"):
        return _after_python(command, "python")
    if _is_python(first):
        return _after_python(rest, first)
    if first.endswith(".py") or (os.sep in first and os.path.isfile(first) and _is_script(first)):
        return _script(first, rest)
    if first.startswith("-"):
        raise TargetError(f"unknown command {first!r}; expected {ACCEPTED}")
    name = os.path.basename(first)
    for ep in metadata.entry_points(group="console_scripts"):
        if ep.name == name:
            return Target("entry_point", ep.value, [first, *rest])
    found = shutil.which(first)
    if found is not None and _is_script(found):
        return Target("path", found, [first, *rest])
    if found is None:
        raise TargetError(
            f"{first!r}: not found (no console script of that name is installed, and it is not "
            f"on PATH); expected {ACCEPTED}"
        )
    raise TargetError(
        f"{first!r} ({found}) is not a Python program, so it cannot run inside loopguard's "
        f"interpreter; expected {ACCEPTED}"
    )


def _is_script(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.readline(200)
    except OSError:
        return False
    return head.startswith(b"#!") and b"python" in head


def run_target(target: Target) -> Outcome:
    """Run the program to its end; its exit status, as the interpreter would have reported
    it (an uncaught exception is printed and is status 1)."""
    sys.argv = list(target.argv)
    try:
        if target.kind == "module":
            sys.path[0] = os.getcwd()
            runpy.run_module(target.name, run_name="__main__", alter_sys=True)
        elif target.kind == "path":
            sys.path[0] = os.path.dirname(target.name)
            runpy.run_path(target.name, run_name="__main__")
        elif target.kind == "code":
            sys.path[0] = ""
            code = compile(target.name, "<string>", "exec")
            exec(code, {"__name__": "__main__", "__builtins__": __builtins__})
        else:
            sys.path[0] = os.path.dirname(shutil.which(target.argv[0]) or target.argv[0])
            entry = metadata.EntryPoint(name=target.argv[0], value=target.name, group="")
            result = entry.load()()
            if result is not None and result != 0:
                raise SystemExit(result)
    except SystemExit as e:
        return Outcome(_exit_status(e.code))
    except KeyboardInterrupt:
        traceback.print_exc()
        return Outcome(130, signal.SIGINT)
    except BaseException:
        traceback.print_exc()
        return Outcome(1)
    return Outcome(0)


def _exit_status(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    try:
        print(code, file=sys.stderr)
    except (OSError, ValueError):
        pass
    return 1
