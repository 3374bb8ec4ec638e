"""Document processing: layout, query validation and report serialisation.

Everything here is ordinary synchronous Python. That is fine in a worker thread and a
problem on the event loop: each function below takes long enough to freeze every other
request the server is handling.
"""

from __future__ import annotations

import csv
import io
import json
import re
from typing import Any

PAGE_WIDTH = 80
LINES_PER_PAGE = 50

# Advance widths of a monospaced-ish font, in font units; anything else is 600.
GLYPH_WIDTHS = {c: 600 for c in "abcdefghijklmnopqrstuvwxyz0123456789"}
GLYPH_WIDTHS.update({c: 700 for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ"})
GLYPH_WIDTHS.update({c: 300 for c in " .,;:'!|il"})
GLYPH_WIDTHS.update({"m": 900, "w": 850, "M": 950, "W": 950})
# Pairs of glyphs that sit closer together than their widths say.
KERNING = {"AV": -80, "AW": -60, "To": -80, "Te": -70, "Ta": -70, "Yo": -90, "ff": -30, "rt": -10}


def render_pages(text: str, *, width: int = PAGE_WIDTH) -> list[list[str]]:
    """Lay ``text`` out into pages of justified lines, in pure Python."""
    return paginate(layout_lines(text, width=width))


def paginate(lines: list[str]) -> list[list[str]]:
    return [lines[i : i + LINES_PER_PAGE] for i in range(0, len(lines), LINES_PER_PAGE)]


def layout_lines(text: str, *, width: int = PAGE_WIDTH) -> list[str]:
    """Break ``text`` (paragraphs separated by blank lines) into justified lines."""
    limit = width * 600
    lines: list[str] = []
    for paragraph in text.split("\n\n"):
        line: list[str] = []
        used = 0
        for word in paragraph.split():
            advance = 0
            prev = " "
            for ch in word:
                advance += GLYPH_WIDTHS.get(ch, 600) + KERNING.get(prev + ch, 0)
                prev = ch
            if line and used + 300 + advance > limit:
                lines.append(_justify(line, used, limit))
                line, used = [], 0
            used += advance + (300 if line else 0)
            line.append(word)
        if line:
            lines.append(" ".join(line))
        lines.append("")
    return lines


def _justify(words: list[str], used: int, limit: int) -> str:
    gaps = len(words) - 1
    if not gaps:
        return words[0]
    extra = (limit - used) // 300
    out = []
    for i, word in enumerate(words[:-1]):
        out.append(word)
        out.append(" " * (1 + extra // gaps + (1 if i < extra % gaps else 0)))
    out.append(words[-1])
    return "".join(out)


# A search query is one or more words, separated by single spaces. The nested quantifier
# makes this pattern backtrack exponentially on a long word followed by a non-word
# character: "quarterly_reports_2024?" takes seconds.
QUERY_RE = re.compile(r"^(\w+\s?)+$")

# The same language without the ambiguity: linear time on any input.
SAFE_QUERY_RE = re.compile(r"^\w+(?: \w+)*$")


def validate_query(query: str) -> bool:
    return QUERY_RE.match(query) is not None


def validate_query_safely(query: str) -> bool:
    return SAFE_QUERY_RE.match(query) is not None


def export_json(rows: list[dict[str, Any]]) -> str:
    """Serialise a report for download, pretty-printed for humans."""
    return json.dumps({"count": len(rows), "rows": rows}, indent=2, sort_keys=True)


def export_csv(rows: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=sorted(rows[0]) if rows else [])
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()
