"""Statement-level capture of a plain UPDATE: its before- and after-images in one INSERT .. SELECT, not per row.

A 10,000-row UPDATE through per-row capture triggers costs 4-5x the UPDATE itself; selecting the rows it
will change, once, costs about 1.5x. That needs the statement's own predicate and SET expressions, so this
module takes an UPDATE apart, token by token, and only when every condition below holds; otherwise the
caller keeps the triggers (always correct, slower):

- the classifier saw only: an UPDATE of columns of one table of `main`, reads of that table's columns, and
  functions that give the same answer twice (`DETERMINISTIC`); no subquery, no trigger body;
- the text is `UPDATE [OR ABORT|FAIL|ROLLBACK] table [[AS] alias] [INDEXED BY i|NOT INDEXED] SET col = expr,
  ... [WHERE expr]`: no WITH, FROM, RETURNING, ORDER BY or LIMIT, no row-value assignment, no column twice;
- the columns set are the ones the classifier saw, none of them part of the key;
- the table has rowids, no triggers, no foreign key actions reaching other tables, and no ON CONFLICT
  REPLACE/IGNORE of its own (which would delete or skip rows the SELECT counted).

The SELECT is built from the statement's own text, SET expressions first and WHERE last, so its parameters
come in the same order and bind the same way. What it predicts is checked after the UPDATE (the count, and
a sample of rows byte for byte); the caller falls back to the triggers when anything differs.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import NamedTuple

# Built-in scalar functions whose result depends only on their arguments (and the connection's settings,
# which do not change between the SELECT and the UPDATE). Anything else, date/time and random included,
# and any application-defined function, keeps the per-row triggers.
DETERMINISTIC = frozenset({
    "abs", "char", "coalesce", "concat", "concat_ws", "format", "glob", "hex", "ifnull", "iif", "instr",
    "length", "like", "likelihood", "likely", "lower", "ltrim", "max", "min", "nullif", "octet_length",
    "printf", "quote", "replace", "round", "rtrim", "sign", "soundex", "substr", "substring", "trim", "typeof",
    "unhex", "unicode", "unlikely", "upper", "zeroblob",
    "acos", "acosh", "asin", "asinh", "atan", "atan2", "atanh", "ceil", "ceiling", "cos", "cosh", "degrees",
    "exp", "floor", "ln", "log", "log10", "log2", "mod", "pi", "pow", "power", "radians", "sin", "sinh",
    "sqrt", "tan", "tanh", "trunc",
    "json", "json_array", "json_array_length", "json_extract", "json_insert", "json_object", "json_patch",
    "json_quote", "json_remove", "json_replace", "json_set", "json_type", "json_valid",
})

_TOKEN = re.compile(r"""
    (?P<ws>\s+)
  | (?P<comment>--[^\n]*|/\*.*?(?:\*/|\Z))
  | (?P<blob>[xX]'[0-9A-Fa-f]*')
  | (?P<string>'(?:[^']|'')*')
  | (?P<ident>"(?:[^"]|"")*"|`(?:[^`]|``)*`|\[[^\]]*\])
  | (?P<number>0[xX][0-9A-Fa-f]+|(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<param>\?\d*|[:@$][A-Za-z0-9_]+)
  | (?P<word>[A-Za-z_\u0080-\uffff][A-Za-z0-9_$\u0080-\uffff]*)
  | (?P<op>->>|->|\|\||<<|>>|<=|>=|==|!=|<>|[-+*/%<>=~&|(),.;])
""", re.VERBOSE | re.DOTALL)

_AFTER_SET = frozenset({"FROM", "WHERE", "RETURNING", "ORDER", "LIMIT"})
_AFTER_WHERE = frozenset({"RETURNING", "ORDER", "LIMIT"})
_CONFLICT_OK = frozenset({"ABORT", "FAIL", "ROLLBACK"})
_ROWID_NAMES = frozenset({"rowid", "oid", "_rowid_"})


class Tok(NamedTuple):
    kind: str
    text: str
    start: int
    end: int
    upper: str
    """The text in capitals for a bare word (a keyword or a name), "" for anything else."""


@dataclass(frozen=True)
class UpdatePlan:
    """An UPDATE taken apart: `source` is the text after UPDATE [OR x] (the table, its alias, any INDEXED BY),
    `assignments` the (column, expression text) pairs in the statement's order, `where` the predicate or None."""

    source: str
    assignments: tuple[tuple[str, str], ...]
    where: str | None


def tokens(sql: str) -> list[Tok] | None:
    """The statement's tokens without blanks and comments, or None when something is not understood (an
    unterminated string, a character SQLite would reject)."""
    out, pos = [], 0
    for m in _TOKEN.finditer(sql):
        start, end = m.span()
        if start != pos or end == start:
            return None
        kind = m.lastgroup or ""
        if kind != "ws" and kind != "comment":
            text = m.group()
            out.append(Tok(kind, text, start, end, text.upper() if kind == "word" else ""))
        pos = end
    return out if pos == len(sql) else None


def _name(tok: Tok) -> str | None:
    if tok.kind == "word":
        return tok.text
    if tok.kind == "ident":
        body = tok.text[1:-1]
        return body.replace('""', '"') if tok.text[0] == '"' else body.replace("``", "`") if tok.text[0] == "`" else body
    return None


@functools.lru_cache(maxsize=256)
def parse_update(sql: str) -> UpdatePlan | None:
    """`sql` as an UpdatePlan, or None when it is not a plain UPDATE of the form above. (Cached by text: the
    plan depends on nothing else, and an agent often repeats a statement.)"""
    toks = tokens(sql)
    if not toks or toks[0].upper != "UPDATE":
        return None
    while toks and toks[-1].text == ";":
        toks = toks[:-1]
    if any(t.text == ";" for t in toks):
        return None
    i = 1
    if i < len(toks) and toks[i].upper == "OR":
        if i + 1 >= len(toks) or toks[i + 1].upper not in _CONFLICT_OK:
            return None
        i += 2
    src_start = i
    depth = 0
    while i < len(toks) and not (depth == 0 and toks[i].upper == "SET"):
        depth += {"(": 1, ")": -1}.get(toks[i].text, 0)
        i += 1
    if i >= len(toks) or i == src_start or depth != 0:
        return None
    source = sql[toks[src_start].start:toks[i - 1].end]
    i += 1
    # SET col = expr, ... up to WHERE (or the end); a clause we do not take ends the plan.
    assignments: list[tuple[str, str]] = []
    part: list[Tok] = []
    depth = 0
    where_at = None
    while True:
        tok = toks[i] if i < len(toks) else None
        boundary = tok is None or (depth == 0 and (tok.text == "," or tok.upper in _AFTER_SET))
        if boundary:
            if depth != 0:
                return None
            if len(part) < 3 or part[1].text != "=" or part[0].kind not in {"word", "ident"}:
                return None
            col = _name(part[0])
            if col is None:
                return None
            assignments.append((col, sql[part[2].start:part[-1].end]))
            part = []
            if tok is None:
                break
            if tok.upper in _AFTER_SET:
                if tok.upper != "WHERE":
                    return None
                where_at = i + 1
                break
            i += 1
            continue
        assert tok is not None  # not a boundary, so not the end
        depth += {"(": 1, ")": -1}.get(tok.text, 0)
        if depth < 0:
            return None
        part.append(tok)
        i += 1
    where = None
    if where_at is not None:
        rest = toks[where_at:]
        depth = 0
        for tok in rest:
            depth += {"(": 1, ")": -1}.get(tok.text, 0)
            if depth == 0 and tok.upper in _AFTER_WHERE:
                return None
        if not rest or depth != 0:
            return None
        where = sql[rest[0].start:rest[-1].end]
    names = [c.lower() for c, _ in assignments]
    if len(set(names)) != len(names):
        return None
    return UpdatePlan(source=source, assignments=tuple(assignments), where=where)


def affinity(declared: str, strict: bool) -> str:
    """The column affinity SQLite gives a declared type (datatype3.html, 3.1), as the type name that gives
    the same affinity in an ordinary table."""
    t = declared.upper()
    if strict and t == "ANY":
        return "BLOB"
    if "INT" in t:
        return "INTEGER"
    if "CHAR" in t or "CLOB" in t or "TEXT" in t:
        return "TEXT"
    if not t or "BLOB" in t:
        return "BLOB"
    if "REAL" in t or "FLOA" in t or "DOUB" in t:
        return "REAL"
    return "NUMERIC"


def rowid_names(columns: list[str]) -> bool:
    """True when a column of the table is itself called rowid, oid or _rowid_ (then `rowid` is ambiguous)."""
    return any(c.lower() in _ROWID_NAMES for c in columns)
