"""Started in every Python process that ``python -m loopguard run`` starts (its directory is put
first on ``PYTHONPATH``, and ``LOOPGUARD_RUN_CHILD`` carries the settings): watches the
process's event loops like the parent's (see :mod:`loopguard._run`). Then runs the
``sitecustomize`` module this one hides, if there is one further on ``sys.path``."""

import os
import sys


def _start() -> None:
    if not os.environ.get("LOOPGUARD_RUN_CHILD"):
        return
    try:
        from loopguard import _run
    except ImportError:  # another interpreter, without loopguard: not watched
        return
    try:
        _run.start_child()
    except Exception as e:
        sys.stderr.write(f"loopguard: this process is not watched: {type(e).__name__}: {e}\n")


def _chain() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    for entry in sys.path:
        if os.path.abspath(entry or os.curdir) == here:
            continue
        candidate = os.path.join(entry or os.curdir, "sitecustomize.py")
        if os.path.isfile(candidate):
            with open(candidate, "rb") as f:
                code = compile(f.read(), candidate, "exec")
            exec(code, {"__name__": "sitecustomize", "__file__": candidate})
            return


_start()
_chain()
