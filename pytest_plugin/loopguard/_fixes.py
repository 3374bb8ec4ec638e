"""What to do instead: the fix for each kind of block, decided from what the event knows.

One ordered table, :data:`RULES`. Each :class:`Rule` names a kind of block, what to do instead
(a template: ``{what}`` is what the rule recognised, ``time.sleep``, ``requests.get``) and how
to recognise it from what the watchdog saw:

* ``modules``: the Python frames the call site called (the frames below the project's innermost
  frame; with no project frame on the stack, those below the loop's dispatch of the callback),
  by dotted module prefix (``urllib.request``), optionally only ``functions`` of them; the
  outermost such frame names what was called (``subprocess.run``);
* ``native``: the native frames below the innermost Python frame (``--loopguard-native=on``),
  by the start of their function's or library's name (``sqlite3_``, ``libz.``);
* ``syscalls``: the system call the loop thread was in, when the GIL was not held by it (C code
  that holds the GIL while it waits in the kernel is a kind of its own);
* ``source``: the call site's line, only when no Python frame ran below it (a C function called
  there directly: ``time.sleep(0.3)``), by a regular expression;
* ``when``: a condition on the block's state (who held the GIL, the cause) that must hold too,
  and ``test``: any other way to recognise it (returns what was recognised, or ``None``).

The first rule that matches gives the fix: specific kinds come before general ones (a queue
before the lock it waits on, an HTTP client before its socket, JSON work before a file read's
system call), and the last rules go by the GIL's state alone (CPU-bound Python, C code holding
or releasing the GIL). To add a kind, add a rule where it belongs in that order, and a line to
the table in docs/guide.md ("What to do instead").

:func:`fix_for` is called once per block, when the watchdog's events are decoded; the result is
``BlockEvent.fix``: the failure report prints it under the call site (``fix: ...``), the JSON
report has it as ``"fix"``, the HTML hotspot table as a column.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Optional

from ._events import BlockEvent, Frame, NativeFrame, blocking_native
from ._failure import _dispatch_index
from ._files import is_user_file, is_wrapper, library_path
from ._judge import cause_explains

__all__ = ["RULES", "Facts", "Rule", "classify", "facts_of", "fix_for"]


@dataclass(frozen=True)
class Facts:
    """What a block's event says about the kind of call that blocked."""

    below: tuple[Frame, ...]
    """The Python frames the call site called, outermost first, wrappers left out."""
    native: tuple[NativeFrame, ...] = ()
    """Native frames below the innermost Python frame, innermost first."""
    syscall: Optional[str] = None
    gil: str = "unknown"
    """``"loop"``, ``"released"``, ``"other"`` or ``"unknown"`` (see ``BlockEvent.gil``)."""
    running: bool = False
    starved: bool = False
    cause: Optional[str] = None
    cause_explains: bool = True
    """The cause accounts for the block's length over its threshold (``_judge.cause_explains``)."""
    source: str = ""
    """The call site's line, when no Python frame ran below it; else ``""``."""
    site_source: str = ""
    """The call site's line."""
    stack: tuple[Frame, ...] = ()
    """The loop thread's whole stack, outermost first."""
    loop_kind: str = "asyncio"


def facts_of(ev: BlockEvent) -> Facts:
    stack = ev.stack
    site = ev.site
    below: list[Frame] = []
    if site is not None and is_user_file(site.filename) and site in stack:
        below = stack[len(stack) - stack[::-1].index(site) :]
    elif stack:
        # No project frame: what the loop called back (a C function it called directly, such
        # as time.sleep given to call_soon, leaves nothing below the dispatch). Without a
        # dispatch frame (the loop's own work), no frame says what was called: the thread
        # that runs the loop and the test runner are not the block.
        cut = _dispatch_index(stack)
        below = stack[cut:] if cut else []
    below = [f for f in below if not is_wrapper(f.filename, f.function)]
    site_source = site.source if site is not None else ""
    return Facts(
        below=tuple(below),
        native=tuple(ev.native_stack),
        syscall=ev.syscall,
        gil=ev.gil,
        running=ev.running,
        starved=ev.starved,
        cause=ev.cause,
        cause_explains=cause_explains(ev),
        source="" if below else site_source,
        site_source=site_source,
        stack=tuple(stack),
        loop_kind=ev.loop_kind,
    )


def _module(f: Frame) -> Optional[str]:
    """The dotted module of a library frame (``urllib.request``), or ``None``."""
    path = library_path(f.filename)
    if path is None:
        if f.filename.startswith("<frozen "):
            return f.filename[len("<frozen ") : -1]
        return None
    if not path.endswith(".py"):
        return None
    parts = path[: -len(".py")].split("/")
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@dataclass(frozen=True)
class Rule:
    """One kind of block and its fix (see the module's docstring)."""

    kind: str
    fix: str
    """What to do instead; ``{what}`` is replaced by what the rule recognised."""
    what: str = ""
    """``{what}`` when the rule recognised the block by a native frame or the system call
    (by a Python frame: its module and function; by the line: the name called there)."""
    modules: tuple[str, ...] = ()
    functions: tuple[str, ...] = ()
    native: tuple[str, ...] = ()
    syscalls: tuple[str, ...] = ()
    source: Optional[str] = None
    when: Optional[Callable[[Facts], bool]] = None
    test: Optional[Callable[[Facts], Optional[str]]] = None
    trio: Optional[str] = None
    """The fix for a trio run, where it differs (asyncio's names do not apply there)."""

    def match(self, facts: Facts) -> Optional[str]:
        """What this rule recognises in ``facts`` (``{what}``), or ``None``."""
        if self.when is not None and not self.when(facts):
            return None
        if not (self.modules or self.native or self.syscalls or self.source or self.test):
            return self.what
        if self.modules:
            for f in facts.below:
                module = _module(f)
                if module is None:
                    continue
                prefix = next(
                    (p for p in self.modules if module == p or module.startswith(p + ".")), None
                )
                if prefix is None:
                    continue
                name = f.function.rsplit(".", 1)[-1]
                if self.functions and name not in self.functions:
                    continue
                return prefix if "<" in f.function else f"{prefix}.{f.function}"
        if self.native:
            for nf in facts.native:
                if (nf.function or "").startswith(self.native) or (nf.library or "").startswith(
                    self.native
                ):
                    return self.what or nf.function or nf.name
        if self.syscalls and facts.syscall in self.syscalls and facts.gil != "loop":
            return self.what or facts.syscall
        if self.source and facts.source:
            m = re.search(self.source, facts.source)
            if m:
                return m.group(0).rstrip("(")
        if self.test is not None:
            return self.test(facts)
        return None

    def text(self, what: str, loop_kind: str = "asyncio") -> str:
        template = self.trio if loop_kind == "trio" and self.trio else self.fix
        return template.format(what=what)


# --- conditions ------------------------------------------------------------------------------


def _computing(facts: Facts) -> bool:
    """The loop thread ran with the GIL (not waiting in a call that released it)."""
    return facts.gil != "released"


def _explicit_gc(facts: Facts) -> bool:
    return facts.cause == "gc" and "gc.collect(" in facts.site_source


_INTERPRETER_LIBRARIES = ("libpython", "python", "libc.", "libpthread", "ld-linux", "libm.")


def _extension_holding_gil(facts: Facts) -> Optional[str]:
    """C code that kept the GIL: in the kernel (a system call other than a lock's wait), or,
    by its native frames, in an extension module's or a library's code."""
    if facts.gil != "loop":
        return None
    # Unnamed system calls are memory management (mmap, munmap, madvise): Python allocating.
    if facts.syscall and facts.syscall != "futex" and not facts.syscall.startswith("system call"):
        return f"C code waiting in {facts.syscall}"
    if facts.native:
        top = blocking_native(list(facts.native))
        if top.library and not top.library.startswith(_INTERPRETER_LIBRARIES):
            return top.function or top.name
    return None


def _sqlalchemy_sync(facts: Facts) -> bool:
    """SQLAlchemy's synchronous engine waiting for its driver, not its asyncio extension (whose
    greenlet bridge runs the same code, and waits by awaiting)."""
    return facts.gil != "loop" and not any(
        f.function.rsplit(".", 1)[-1] in ("greenlet_spawn", "await_only") for f in facts.stack
    )


# --- the table -------------------------------------------------------------------------------

_FILE_FIX = "aiofiles or anyio.Path, or await asyncio.to_thread(...), instead of {what}"
_TRIO_FILE_FIX = "trio.Path, or await trio.to_thread.run_sync(...), instead of {what}"

_SOCKET_CALLS = (
    "recvfrom", "recvmsg", "recvmmsg", "recv", "sendto", "sendmsg", "sendmmsg", "send",
    "connect", "accept", "accept4", "poll", "ppoll", "select", "pselect6", "socket",
    "epoll_wait", "epoll_pwait",
)  # fmt: skip
_FILE_CALLS = (
    "read", "write", "pread64", "pwrite64", "readv", "writev", "preadv", "pwritev", "preadv2",
    "pwritev2", "open", "openat", "openat2", "close", "fsync", "fdatasync", "sync_file_range",
    "stat", "fstat", "lstat", "newfstatat", "statx", "getdents64", "unlink", "unlinkat",
    "rename", "renameat", "renameat2", "mkdir", "mkdirat", "rmdir", "sendfile",
    "copy_file_range", "ftruncate", "fallocate", "flock", "fcntl",
)  # fmt: skip
_JSON_NATIVE = (
    "_json", "encoder_listencode", "scanstring_unicode", "scan_once_unicode",
    "_parse_object_unicode", "_parse_array_unicode", "py_encode_basestring",
)  # fmt: skip
_HTTP_MODULES = (
    "requests", "urllib3", "http.client", "urllib.request", "httpcore._sync", "httplib2",
    "xmlrpc.client", "ftplib", "smtplib", "poplib", "imaplib",
)  # fmt: skip
_DNS_FUNCTIONS = ("getaddrinfo", "gethostbyname", "gethostbyname_ex", "gethostbyaddr", "getfqdn")

RULES: tuple[Rule, ...] = (
    # Not the loop thread's own code.
    Rule(
        "starvation",
        "move the GIL holder's work to a process pool, or make it release the GIL",
        when=lambda f: f.starved,
    ),
    Rule(
        "import",
        "import it at module level or at start-up, not inside a coroutine",
        when=lambda f: f.cause == "import",
    ),
    Rule(
        "gc",
        "no gc.collect() on the loop: gc.freeze() after start-up, and let the collector run",
        when=_explicit_gc,
    ),
    Rule(
        "gc",
        "gc.freeze() after start-up, or fewer long-lived objects (the collector's work, not "
        "this line's)",
        # A block that is over the threshold without the collection is the code's.
        when=lambda f: f.cause == "gc" and f.cause_explains,
    ),
    # Work done with the GIL held, inside whatever library asked for it.
    Rule(
        "json",
        "{what} of large data in a process pool (json holds the GIL: a thread stalls the loop "
        "too), or less at a time",
        what="json",
        modules=("json", "simplejson"),
        native=_JSON_NATIVE,
        when=_computing,
    ),
    Rule(
        "pickle",
        "{what} of large objects in a process pool (pickle holds the GIL), or less at a time",
        what="pickle",
        modules=("pickle", "copyreg", "marshal"),
        native=("_pickle", "marshal_"),
        source=r"\b(?:c?pickle|marshal)\.(?:dumps?|loads?)\(",
        when=_computing,
    ),
    Rule(
        "regex",
        "a pattern that cannot backtrack catastrophically, or {what} in a process pool (re "
        "holds the GIL)",
        what="the regular expression",
        modules=("re", "sre_compile", "sre_parse", "fnmatch"),
        native=("sre_", "_sre_", "pattern_subx"),
        when=_computing,
    ),
    Rule(
        "compression",
        "{what} in a thread (await asyncio.to_thread(...)): zlib, bz2 and lzma release the GIL",
        trio="{what} in a thread (await trio.to_thread.run_sync(...)): zlib, bz2 and lzma "
        "release the GIL",
        what="compression",
        modules=("gzip", "zlib", "bz2", "lzma", "zipfile", "tarfile", "_compression"),
        native=("libz.", "zlib.", "_bz2", "libbz2", "_lzma", "liblzma", "deflate", "inflate"),
        source=r"\b(?:zlib|gzip|bz2|lzma)\.\w+\(",
    ),
    # Blocking clients and waits: their asynchronous counterparts.
    Rule(
        "http",
        "an async HTTP client (httpx.AsyncClient, aiohttp) instead of {what}",
        what="a blocking HTTP client",
        modules=_HTTP_MODULES,
    ),
    Rule(
        "dns",
        "await loop.getaddrinfo(...) instead of {what}",
        trio="await trio.socket.getaddrinfo(...) instead of {what}",
        what="socket.getaddrinfo",
        modules=("socket",),
        functions=_DNS_FUNCTIONS,
        source=r"\bsocket\.(?:getaddrinfo|gethostbyname(?:_ex)?|gethostbyaddr|getfqdn)\(",
    ),
    Rule(
        "sqlite3",
        "aiosqlite, or the query in a thread (await asyncio.to_thread(...)), instead of {what}",
        trio="the query in a thread (await trio.to_thread.run_sync(...)) instead of {what}",
        what="sqlite3",
        modules=("sqlite3",),
        native=("sqlite3", "libsqlite3", "_sqlite3", "pysqlite_", "_pysqlite_"),
        source=r"\bsqlite3\.\w+\(",
    ),
    Rule(
        "postgres",
        "an async driver (asyncpg, psycopg's AsyncConnection) instead of {what}",
        what="psycopg2",
        modules=("psycopg2", "psycopg", "pg8000"),
        native=("libpq", "_psycopg", "PQexec", "PQgetResult"),
    ),
    Rule(
        "mysql",
        "an async driver (aiomysql, asyncmy) instead of {what}",
        what="a blocking MySQL driver",
        modules=("pymysql", "MySQLdb", "mysql.connector"),
        native=("libmysqlclient", "libmariadb", "_mysql", "mysql_"),
    ),
    Rule("redis", "redis.asyncio instead of {what}", modules=("redis",)),
    Rule(
        "mongodb", "pymongo's AsyncMongoClient (or motor) instead of {what}", modules=("pymongo",)
    ),
    Rule(
        "sqlalchemy",
        "SQLAlchemy's asyncio extension (create_async_engine, AsyncSession) instead of {what}",
        modules=("sqlalchemy",),
        when=_sqlalchemy_sync,
    ),
    Rule(
        "subprocess",
        "await asyncio.create_subprocess_exec(...) instead of {what}",
        trio="await trio.run_process(...) instead of {what}",
        what="waiting for a child process",
        modules=("subprocess", "pty"),
        syscalls=("wait4", "waitid", "waitpid"),
        source=r"\bos\.(?:system|wait(?:pid|3|4|id)?|popen)\(",
    ),
    Rule(
        "future",
        "await asyncio.wrap_future(...) instead of {what}",
        trio="await trio.to_thread.run_sync(...) around the wait instead of {what}",
        modules=("concurrent.futures",),
    ),
    Rule(
        "process-pool",
        "await loop.run_in_executor(ProcessPoolExecutor(), ...) instead of {what}",
        modules=("multiprocessing",),
    ),
    Rule(
        "queue",
        "an asyncio.Queue (janus to share one with threads) instead of {what}",
        trio="a trio memory channel instead of {what}",
        modules=("queue",),
    ),
    Rule(
        "logging",
        "a QueueHandler and QueueListener (handlers that write from a thread) instead of {what}",
        modules=("logging",),
    ),
    Rule(
        "lock",
        "an asyncio.Lock/Event/Condition, or await asyncio.to_thread(...) around the wait, "
        "instead of {what}",
        trio="a trio.Lock/Event, or await trio.to_thread.run_sync(...) around the wait, "
        "instead of {what}",
        what="a thread's lock (futex)",
        modules=("threading",),
        functions=("wait", "wait_for", "acquire", "join", "_wait_for_tstate_lock", "__enter__"),
        syscalls=("futex",),
    ),
    Rule(
        "file",
        _FILE_FIX,
        trio=_TRIO_FILE_FIX,
        modules=("os",),
        functions=("walk", "fwalk", "makedirs", "removedirs", "renames"),
    ),
    Rule(
        "file",
        _FILE_FIX,
        trio=_TRIO_FILE_FIX,
        what="blocking file I/O",
        modules=("pathlib", "shutil", "tempfile", "glob", "filecmp", "fileinput", "_pyio"),
        syscalls=_FILE_CALLS,
    ),
    Rule(
        "socket",
        "asyncio streams (asyncio.open_connection) or loop.sock_* methods instead of {what}",
        trio="trio streams (trio.open_tcp_stream) instead of {what}",
        what="a blocking socket",
        modules=("socket", "ssl", "select", "selectors"),
        syscalls=_SOCKET_CALLS,
    ),
    Rule(
        "sleep",
        "await asyncio.sleep(...) instead of {what}",
        trio="await trio.sleep(...) instead of {what}",
        what="time.sleep",
        syscalls=("clock_nanosleep", "nanosleep"),
        source=r"(?<![\w.])(?:time\.)?sleep\(",
    ),
    # By the GIL's state alone.
    Rule(
        "c-holding-gil",
        "a process pool, or a call that releases the GIL (then a thread): {what} holds the GIL",
        test=_extension_holding_gil,
    ),
    # Python code, or C code that holds the GIL where no native frames say which.
    Rule(
        "cpu",
        "a process pool (loop.run_in_executor(ProcessPoolExecutor(), ...)) for CPU-bound work",
        trio="a process pool for CPU-bound work (a thread would hold the GIL)",
        when=lambda f: f.gil == "loop",
    ),
    Rule(
        "c-releasing-gil",
        "a thread (await asyncio.to_thread(...), or anyio.to_thread.run_sync): the call "
        "releases the GIL",
        trio="a thread (await trio.to_thread.run_sync(...)): the call releases the GIL",
        when=lambda f: f.gil == "released",
    ),
)
"""Every kind of block, most specific first: :func:`classify` takes the first that matches."""


def classify(facts: Facts, rules: tuple[Rule, ...] = RULES) -> Optional[tuple[Rule, str]]:
    """The first rule that matches ``facts`` and what it recognised, or ``None``."""
    for rule in rules:
        what = rule.match(facts)
        if what is not None:
            return rule, what
    return None


def fix_for(ev: BlockEvent) -> Optional[str]:
    """The fix for ``ev`` (``None`` when nothing was sampled, or no rule matches)."""
    if not ev.stack and not ev.native_stack and ev.syscall is None and not ev.starved:
        return None
    found = classify(facts_of(ev))
    if found is None:
        return None
    rule, what = found
    return rule.text(what, ev.loop_kind)
