"""The documentation's links lead somewhere: every relative link of the Markdown files names a
file of the repository, and every #anchor a heading of its target (GitHub's slugs)."""

import ast
import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.single_version

ROOT = Path(__file__).resolve().parents[2]
PAGES = sorted(
    [
        *(ROOT / name for name in ("README.md", "CONTRIBUTING.md", "CHANGELOG.md")),
        *(ROOT / "docs").glob("*.md"),
        ROOT / "examples" / "README.md",
    ]
)
EXAMPLES = ROOT / "examples"
LINK = re.compile(r"\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.M | re.S)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set:
    text = FENCE.sub("", page.read_text())
    return {slug(m.group(1)) for m in re.finditer(r"^#+ (.+)$", text, re.M)}


def links(page: Path):
    text = FENCE.sub("", page.read_text())
    for target in LINK.findall(text):
        if not re.match(r"[a-z]+:", target):
            yield target


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    broken = []
    for target in links(page):
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading with that anchor in {dest.name}")
    assert not broken, f"{page.relative_to(ROOT)}: " + "; ".join(broken)


def test_slug_follows_github():
    assert slug("Without the plugin: `loopguard.guard()`") == "without-the-plugin-loopguardguard"
    assert slug("How a verdict is reached") == "how-a-verdict-is-reached"


# A frame of the example app as loopguard prints it: "app/scanner.py:18 in scan", or
# 'File "examples/app/scanner.py", line 18, in scan' in a stack.
EXAMPLE_FRAME = re.compile(
    r'(?:^|[\s"(])(?:examples/)?((?:app|tests)/\w+\.py)(?::(\d+) in |", line (\d+), in )([\w.<>]+)'
)
# Scopes that loopguard names after the function they are in (Python 3.11's comprehensions).
INNER_SCOPE = re.compile(r"\.<locals>\.<(listcomp|dictcomp|setcomp|genexpr|lambda)>$")


def scopes(source: str) -> list[tuple[int, int, str]]:
    """The functions of ``source``: first line, last line and qualified name (as
    ``co_qualname``: ``Storage.seed``, ``create_app.<locals>.health``)."""
    found = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = prefix + child.name
                found.append((child.lineno, child.end_lineno or child.lineno, name))
                visit(child, name + ".<locals>.")
            elif isinstance(child, ast.ClassDef):
                visit(child, prefix + child.name + ".")
            else:
                visit(child, prefix)

    visit(ast.parse(source), "")
    return found


def function_at(path: Path, line: int) -> str:
    """The qualified name of the innermost function of ``path`` that holds ``line``."""
    holding = [
        (first, name) for first, last, name in scopes(path.read_text()) if first <= line <= last
    ]
    return max(holding)[1] if holding else "<module>"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_frames_of_the_example_name_their_lines(page):
    """Every frame of the example app that a page quotes (its reports, its stacks) names a line
    of that function, and the source shown under it is that line: a sample left behind by a
    change of the example fails here, whatever a run would print. (Frames of files the example
    does not have are illustrations.)"""
    lines = page.read_text().splitlines()
    wrong = []
    for n, text in enumerate(lines):
        for m in EXAMPLE_FRAME.finditer(text):
            path = EXAMPLES / m[1]
            if not path.exists():
                continue
            line, function = int(m[2] or m[3]), INNER_SCOPE.sub("", m[4])
            source = path.read_text().splitlines()
            where = f"{page.relative_to(ROOT)}:{n + 1}: {m[1]}:{line} in {m[4]}"
            if not 0 < line <= len(source):
                wrong.append(f"{where}: {m[1]} has {len(source)} lines")
                continue
            if function_at(path, line) != function:
                wrong.append(f"{where}: that line is in {function_at(path, line)}")
            shown = lines[n + 1].strip() if n + 1 < len(lines) else ""
            if m[3] or shown.startswith(">"):  # the source line printed under the frame
                shown = shown.removeprefix(">").strip()
                if (
                    shown
                    and not shown.startswith(("File ", "..."))
                    and shown != source[line - 1].strip()
                ):
                    wrong.append(
                        f"{where}: line {line} is {source[line - 1].strip()!r}, not {shown!r}"
                    )
    assert not wrong, "\n".join(wrong)
