"""Which request a blocked task was serving, for ``python -m loopguard run``.

The ASGI application a server calls is wrapped (uvicorn's ``Config.load``, Starlette's and so
FastAPI's ``__call__``, hypercorn's app wrapper: whichever is imported, patched right after its
import). The wrapper notes, per task, the request's method and path, and the context the task
runs in. A block's report names the request of the task the watchdog saw running (the event's
``task_name``, read while the loop was blocked), and the value of the context variables the
user named (``--context-var``), as the request had them when it started its response (or
ended), and, when OpenTelemetry is imported, the trace and span ids of its current span.

Nothing here runs in a loop's hot path: the wrapper runs once per request, and the lookup
happens in the reporter thread. The table is bounded (the oldest requests are forgotten).
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import functools
import sys
import threading
from typing import Any, Optional

from ._events import BlockEvent
from ._imports import PostImportFinder

__all__ = ["context_of", "install", "settled", "wrap"]

_KEPT = 4096


class _Request:
    __slots__ = ("context", "label", "scope", "settled")

    def __init__(self, label: str, context: Optional[contextvars.Context], scope: Any) -> None:
        self.label = label
        self.context = context
        """``None`` when no context is wanted (no ``--context-var``, no OpenTelemetry)."""
        self.scope = scope
        self.settled = context is None
        """True once the response started (or the call ended): the context is as the
        request's code left it."""


_requests: collections.OrderedDict[tuple[int, str], _Request] = collections.OrderedDict()
_lock = threading.RLock()  # see Session._lock
_context_vars = False
"""True when ``--context-var`` names variables: each request's context is kept."""


def _contexts_wanted() -> bool:
    return _context_vars or "opentelemetry.trace" in sys.modules


def _label(scope: dict[str, Any]) -> str:
    path = scope.get("path") or scope.get("raw_path") or "?"
    if isinstance(path, bytes):
        path = path.decode("latin-1")
    if scope.get("type") == "websocket":
        return f"WEBSOCKET {path}"
    return f"{scope.get('method', '?')} {path}"


def _live_context(task: Any) -> Optional[contextvars.Context]:
    get = getattr(task, "get_context", None)  # 3.12+: the task's own context, live
    return get() if get is not None else None


def wrap(app: Any) -> Any:
    """``app`` noting each HTTP or WebSocket request it serves (``app`` itself if it already
    does)."""
    if getattr(app, "_loopguard_asgi", False):
        return app

    async def loopguard_asgi(scope: Any, receive: Any, send: Any) -> Any:
        return await _serve(app, scope, receive, send)

    loopguard_asgi._loopguard_asgi = True  # type: ignore[attr-defined]
    return loopguard_asgi


async def _serve(app: Any, scope: Any, receive: Any, send: Any) -> Any:
    """``app(scope, receive, send)``, the request noted (and its context, when wanted, as it
    stands when the response starts)."""
    request = _begin(scope)
    if request is None or request.context is None:
        return await app(scope, receive, send)

    async def noting_send(message: Any) -> Any:
        if not request.settled and message.get("type") in (
            "http.response.start",
            "websocket.accept",
        ):
            _settle(request)
        return await send(message)

    try:
        return await app(scope, receive, noting_send)
    finally:
        _settle(request)


def _begin(scope: Any) -> Optional[_Request]:
    if not isinstance(scope, dict) or scope.get("type") not in ("http", "websocket"):
        return None
    try:
        task = asyncio.current_task()
    except RuntimeError:  # not an asyncio loop (a trio server)
        return None
    if task is None:
        return None
    key = (threading.get_ident(), task.get_name())
    known = _requests.get(key)
    if known is not None and known.scope is scope:
        return None  # the server's wrapper noted it already (a Starlette app under uvicorn)
    context = None
    if _contexts_wanted():
        context = _live_context(task) or contextvars.copy_context()
    request = _Request(_label(scope), context, scope)
    with _lock:
        _requests[key] = request
        _requests.move_to_end(key)
        while len(_requests) > _KEPT:
            _requests.popitem(last=False)
    return request


def _settle(request: _Request) -> None:
    """The request's context as its code left it: at the start of its response (or, for one
    that never responded, at the end of the call). The first call wins: at the end of the
    call, the middlewares have reset what they set (an OpenTelemetry span)."""
    if request.context is None or request.settled:
        return
    if _live_context(asyncio.current_task()) is None:
        request.context = contextvars.copy_context()
    request.settled = True


def _find(ev: BlockEvent) -> Optional[_Request]:
    if not ev.task_name:
        return None
    with _lock:
        return _requests.get((ev.thread_ident, ev.task_name))


def settled(ev: BlockEvent) -> bool:
    """True when the block's report can be written now: its task served no request, or the
    request has started its response (its context is as its code left it)."""
    request = _find(ev)
    return request is None or request.settled


def context_of(ev: BlockEvent, names: tuple[str, ...]) -> dict[str, Any]:
    """``{"request": "GET /path", "vars": {...}, "trace_id": ..., "span_id": ...}`` for the
    block's task (empty when it served no request)."""
    request = _find(ev)
    if request is None:
        return {}
    out: dict[str, Any] = {"request": request.label}
    if names and request.context is not None:
        found = {}
        for var, value in request.context.items():
            if var.name in names:
                found[var.name] = value if isinstance(value, (str, int, float)) else repr(value)
        out["vars"] = {n: found[n] for n in names if n in found}
    if request.context is not None:
        out.update(_trace(request.context))
    return out


def _trace(context: contextvars.Context) -> dict[str, str]:
    trace = sys.modules.get("opentelemetry.trace")
    if trace is None:
        return {}
    try:
        span = context.run(trace.get_current_span)
        sc = span.get_span_context()
    except Exception:  # the context is entered elsewhere, or no span
        return {}
    if not getattr(sc, "is_valid", False):
        return {}
    return {"trace_id": f"{sc.trace_id:032x}", "span_id": f"{sc.span_id:016x}"}


# --- where the servers call the application ---------------------------------------------


def _patch_uvicorn(module: Any) -> None:
    config: Any = getattr(module, "Config", None)
    load = getattr(config, "load", None)
    if load is None or getattr(load, "_loopguard", False):
        return

    @functools.wraps(load)
    def loading(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = load(self, *args, **kwargs)
        app = getattr(self, "loaded_app", None)
        if app is not None:
            self.loaded_app = wrap(app)
        return result

    loading._loopguard = True  # type: ignore[attr-defined]
    config.load = loading


def _patch_starlette(module: Any) -> None:
    cls: Any = getattr(module, "Starlette", None)
    call: Any = vars(cls).get("__call__") if isinstance(cls, type) else None
    if call is None or getattr(call, "_loopguard", False):
        return

    @functools.wraps(call)
    async def calling(self: Any, scope: Any, receive: Any, send: Any) -> Any:
        return await _serve(functools.partial(call, self), scope, receive, send)

    calling._loopguard = True  # type: ignore[attr-defined]
    cls.__call__ = calling


_PATCHES = {"uvicorn.config": _patch_uvicorn, "starlette.applications": _patch_starlette}


def install(context_vars: bool = False) -> None:
    """Patch the servers and frameworks imported now, and those imported later when their
    import finishes. ``context_vars``: keep each request's context (``--context-var``)."""
    global _context_vars
    _context_vars = _context_vars or context_vars
    for name, patch in _PATCHES.items():
        if name in sys.modules:
            patch(sys.modules[name])
    if _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)


_FINDER = PostImportFinder(_PATCHES.get)
