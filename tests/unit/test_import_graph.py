"""loopguard's modules import one another without a circle: every import counts, those at the
top of a module, inside a function and under ``if TYPE_CHECKING:`` alike (a circle that only
type checkers or a late call follow is still a knot a reader has to untie). In-process, from
the source: each module's imports are read with ``ast``."""

import ast
import importlib
import itertools
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import loopguard

PACKAGE = Path(loopguard.__file__).parent

NOT_IMPORTED = {"loopguard.__main__"}
"""Modules whose import runs a program (``python -m loopguard``): read, not imported."""


def modules_of(package: Path, name: str) -> dict[str, Path]:
    """The modules of the package in ``package`` (named ``name``): ``{dotted name: file}``;
    an extension module (``_native``) has no file to read (``None``)."""
    found: dict[str, Path] = {}
    for path in sorted(package.rglob("*")):
        rel = path.relative_to(package)
        if not all(part.isidentifier() for part in rel.parts[:-1]):
            continue
        if not (path.parent / "__init__.py").exists():
            continue  # a directory of files that are not the package's (_run_site)
        stem = path.name.split(".", 1)[0]
        if path.suffix == ".py":
            parts = [name, *rel.parts[:-1]] + ([] if stem == "__init__" else [stem])
            found[".".join(parts)] = path
        elif path.suffix in (".so", ".pyd", ".pyi"):
            found.setdefault(".".join([name, *rel.parts[:-1], stem]), None)
    return found


def imports_of(module: str, path: Path, known: dict[str, Path]) -> dict[str, list[int]]:
    """The modules of ``known`` that ``module`` imports, anywhere in its file: ``{module:
    [lines]}``. ``from . import x`` names the submodule ``x`` when there is one, else the
    package (its ``__init__``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out: dict[str, list[int]] = {}

    def add(target: str, line: int) -> None:
        if target in known and target != module:
            out.setdefault(target, []).append(line)

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = parts[: len(parts) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                add(sub if sub in known else source, node.lineno)
    return out


def import_graph(package: Path, name: str) -> dict[str, dict[str, list[int]]]:
    known = modules_of(package, name)
    return {m: imports_of(m, p, known) if p else {} for m, p in known.items()}


def circles(graph: dict[str, dict[str, list[int]]]) -> list[list[str]]:
    """Each circle found by a depth-first walk, as the modules around it (first repeated)."""
    found = []
    state: dict[str, str] = {}
    path: list[str] = []

    def visit(m: str) -> None:
        state[m] = "open"
        path.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == "open":
                found.append([*path[path.index(n) :], n])
            elif n not in state:
                visit(n)
        path.pop()
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m)
    return found


def describe(circle: list[str], graph: dict[str, dict[str, list[int]]]) -> str:
    return (
        " -> ".join(f"{a} (line {graph[a][b][0]})" for a, b in itertools.pairwise(circle))
        + f" -> {circle[-1]}"
    )


def test_every_module_of_the_package_imports():
    graph = import_graph(PACKAGE, "loopguard")
    assert {"loopguard", "loopguard.plugin", "loopguard._native", "loopguard._judge"} <= set(graph)
    for name in sorted(set(graph) - NOT_IMPORTED):
        importlib.import_module(name)


def test_no_module_imports_itself_back_through_others():
    graph = import_graph(PACKAGE, "loopguard")
    found = circles(graph)
    assert not found, "import circles:\n" + "\n".join(describe(c, graph) for c in found)


def test_a_circle_through_a_type_checking_or_a_late_import_is_found(tmp_path: Path):
    pkg = tmp_path / "knot"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from ._a import A\n")
    (pkg / "_a.py").write_text("from ._b import B\nclass A: ...\n")
    (pkg / "_b.py").write_text(
        textwrap.dedent(
            """
            from typing import TYPE_CHECKING
            if TYPE_CHECKING:
                from ._c import C
            class B: ...
            """
        )
    )
    (pkg / "_c.py").write_text("def late():\n    from . import _a\n    return _a.A\n")
    (pkg / "_d.py").write_text("from knot import _c\nfrom . import __doc__\n")
    graph = import_graph(pkg, "knot")
    assert graph["knot._b"] == {"knot._c": [4]}
    assert graph["knot._d"] == {"knot._c": [1], "knot": [2]}
    assert circles(graph) == [["knot._a", "knot._b", "knot._c", "knot._a"]]
    assert describe(circles(graph)[0], graph) == (
        "knot._a (line 1) -> knot._b (line 4) -> knot._c (line 2) -> knot._a"
    )


def test_import_loopguard_loads_the_api_not_the_plugin_reports_or_cli():
    # The API itself is imported on first use (loopguard.guard, from loopguard import ...).
    show = (
        "print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('loopguard', 'pytest', '_pytest'))))\n"
    )
    touch = "loopguard.guard, loopguard.offload_check, loopguard.BlockEvent\n"
    code = f"import sys, loopguard\n{show}{touch}{show}"
    lines = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    api = {"loopguard._guard", "loopguard._offload", "loopguard._events"}
    assert not api & set(lines[0].split())
    out = lines[1].split()
    assert api <= set(out)
    plugin_side = {
        "pytest",
        "loopguard.plugin",
        "loopguard._settings",
        "loopguard._state",
        "loopguard._fixture",
        "loopguard._xdist",
        "loopguard._phases",
        "loopguard._report",
        "loopguard._reportfile",
        "loopguard._html",
        "loopguard._merge",
        "loopguard._cli",
        "loopguard._run",
    }
    assert not plugin_side & set(out)


def test_the_contributing_guide_maps_every_module_in_import_order():
    guide = (Path(__file__).resolve().parents[2] / "CONTRIBUTING.md").read_text(encoding="utf-8")
    start = guide.index("`pytest_plugin/loopguard/`, the Python package")
    section = guide[start : guide.index("\n\n", start)]
    named = []
    for file in re.findall(r"`(\w+(?:\.pyi?|/))`", section):
        assert (PACKAGE / file).exists(), f"CONTRIBUTING.md names {file}, not in the package"
        if file.endswith("/"):
            continue  # a directory that is not a package (_run_site/)
        stem = file.split(".")[0]
        module = "loopguard" if stem == "__init__" else f"loopguard.{stem}"
        if module not in named:
            named.append(module)
    graph = import_graph(PACKAGE, "loopguard")
    assert sorted(named) == sorted(graph), "modules missing from CONTRIBUTING.md's map"
    for i, module in enumerate(named):
        later = sorted(set(graph[module]) - set(named[:i]))
        assert not later, f"{module} imports {later}, listed after it in CONTRIBUTING.md"
