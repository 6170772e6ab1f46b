"""Aligned tables for the CLI: a header, columns that line up, and on a terminal, rows wrapped at
word boundaries to fit its width. Piped output keeps one line per row, for grep and scripts.

Hand-written (about 60 lines, stdlib `textwrap` only) rather than rich: these are plain text tables
with no colour, and `rich` would be a new dependency that costs tens of milliseconds to import.
"""

from __future__ import annotations

import shutil
import sys
import textwrap
from collections.abc import Sequence
from typing import TextIO

from safe_mcp.text import plural

__all__ = ["plural", "table", "terminal_width"]

_GAP = "  "
_MIN_COL = 8


def terminal_width(stream: TextIO | None = None) -> int | None:
    """The width of the terminal `stream` writes to, or None when it is not a terminal."""
    stream = stream or sys.stdout
    try:
        if not stream.isatty():
            return None
    except (AttributeError, ValueError):
        return None
    return max(40, shutil.get_terminal_size((100, 24)).columns)


def table(headers: Sequence[str], rows: Sequence[Sequence[object]], *, width: int | None = None,
          indent: str = "") -> str:
    """Render `rows` under `headers`, aligned. With `width` (a terminal's), the widest columns are
    narrowed and their cells wrapped between words until the table fits; a single word longer than its
    column is kept whole (it overflows rather than being cut). Without `width`, one line per row."""
    cells = [[str(v) if v is not None else "" for v in r] for r in rows]
    if width is None:
        cells = [[v.replace("\n", " ") for v in r] for r in cells]
    n = len(headers)
    natural = [max([len(headers[i])] + [_longest_line(r[i]) for r in cells]) for i in range(n)]
    widths = list(natural)
    if width is not None:
        room = width - len(indent) - len(_GAP) * (n - 1)
        # A column is never narrower than its header or its longest word (words are never cut).
        floors = [max([_MIN_COL, len(headers[i])] + [_longest_word(r[i]) for r in cells]) for i in range(n)]
        # Narrow the widest column that can still give, one step at a time, until the table fits.
        while sum(widths) > room:
            narrowable = [k for k in range(n) if widths[k] > floors[k]]
            if not narrowable:
                break
            i = max(narrowable, key=lambda k: widths[k])
            widths[i] -= 1
    out = [_line(list(headers), widths, indent), _line(["-" * w for w in widths], widths, indent)]
    for r in cells:
        wrapped = [_wrap(v, widths[i]) if width is not None else [v] for i, v in enumerate(r)]
        for k in range(max(len(c) for c in wrapped)):
            out.append(_line([c[k] if k < len(c) else "" for c in wrapped], widths, indent))
    return "\n".join(out)


def _wrap(text: str, w: int) -> list[str]:
    lines: list[str] = []
    for para in text.split("\n"):
        lines += textwrap.wrap(para, w, break_long_words=False, break_on_hyphens=False) or [""]
    return lines or [""]


def _line(values: Sequence[str], widths: Sequence[int], indent: str) -> str:
    padded = [v.ljust(w) for v, w in zip(values[:-1], widths[:-1], strict=True)] + [values[-1]]
    return (indent + _GAP.join(padded)).rstrip()


def _longest_line(text: str) -> int:
    return max((len(s) for s in text.split("\n")), default=0)


def _longest_word(text: str) -> int:
    return max((len(w) for w in text.split()), default=0)
