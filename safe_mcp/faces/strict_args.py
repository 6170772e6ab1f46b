"""Tool arguments checked before any tool runs: the names a tool declares, their types, and values no target
can take faithfully (lone surrogates, integers beyond 64 bits, non-finite floats, absurd nesting).

Pure functions, no I/O: the server turns a `Violation` into a receipted gate refusal.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

__all__ = ["MAX_DEPTH", "Violation", "check_names", "check_types", "check_values", "strict_schema"]

MAX_DEPTH = 32
"""Deepest nesting of an argument value; nothing a tool takes needs more, and deeper values exhaust parsers."""

INT64 = (-(2**63), 2**63 - 1)
"""The integers every driver binds (SQLite INTEGER, PostgreSQL bigint, JSON numbers AWS accepts)."""

SURROGATE_STAND_IN = "\uffff"
"""What the HTTP guard puts where a lone surrogate was (jiter cannot carry one); refused like the surrogate."""


@dataclass(frozen=True)
class Violation:
    """Why arguments were refused before the tool ran: `reason` and `remedy` in the gate's words, and the
    arguments as they may be receipted (offending values replaced by a description)."""

    reason: str
    remedy: str
    recorded: dict[str, Any]


def strict_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """`schema` saying that no argument beyond its properties is accepted."""
    schema["additionalProperties"] = False
    return schema


def check_values(tool: str, arguments: Mapping[str, Any]) -> Violation | None:
    """The first value no target can take: lone surrogate, integer beyond 64 bits, NaN/infinity, deep nesting.

    Every offending top-level argument is described, not kept, in `recorded` (it may not even serialise).
    """
    found: dict[str, tuple[str, str]] = {}
    for name, value in arguments.items():
        if _bad_text(name):
            found.setdefault(name, (_printable(name), _SURROGATE))
            continue
        for path, problem in _hazards(value, name, 1):
            found[name] = (path, problem)
            break
    if not found:
        return None
    path, problem = next(iter(found.values()))
    path = path if len(path) <= 80 else path[:60] + "..."
    recorded = {k: (f"<{found[k][1].split(',')[0]}>" if k in found else v) for k, v in arguments.items()
                if not _bad_text(k)}
    return Violation(f"{tool} argument {path} {problem}; nothing ran", _REMEDY[problem.split(" ")[0]] + " and call again",
                     recorded)


def check_names(tool: str, arguments: Mapping[str, Any], schema: Mapping[str, Any]) -> Violation | None:
    """Arguments the tool does not declare: refused, so a typo (`dryrun`) never silently drops a safety flag."""
    known = list(schema.get("properties", {}))
    unknown = [name for name in arguments if name not in known]
    if not unknown:
        return None
    hints = []
    for name in unknown[:5]:
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
        if close:
            hints.append(f"{name!r} is probably {close[0]!r}")
    words = ", ".join(repr(n if len(n) <= 40 else n[:40] + "...") for n in unknown[:5])
    words += f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
    reason = f"{tool} has no argument{'s' if len(unknown) > 1 else ''} {words}; nothing ran"
    remedy = (f"use only {', '.join(known)}" if known else "pass no arguments") + (
        f" ({'; '.join(hints)})" if hints else "")
    return Violation(reason, remedy + " and call again", dict(arguments))


def check_types(tool: str, exc: ValidationError, schema: Mapping[str, Any], arguments: Mapping[str, Any]) -> Violation:
    """The SDK's validation failure in the gate's words: which argument, what it should be, never the value."""
    properties = schema.get("properties", {})
    problems: dict[str, str] = {}
    for err in exc.errors(include_url=False, include_input=False):
        top, where = str(err["loc"][0]) if err["loc"] else "arguments", _loc(err["loc"])
        if err["type"] == "missing":
            problems.setdefault(where, f"the required argument {where} is missing")
        elif err["type"].endswith(("_type", "_parsing")) and top in properties:
            # One line per argument, even when a union tried several types.
            problems.setdefault(top, f"{top} should be {_expected(properties[top])}")
        else:
            problems.setdefault(where, f"{where}: {err['msg'][0].lower()}{err['msg'][1:]}")
    reason = f"{tool} arguments do not fit: {'; '.join(problems.values())}; nothing ran"
    required = set(schema.get("required", []))
    names = ", ".join(f"{n} (required)" if n in required else n for n in properties)
    return Violation(reason, f"pass {names or 'no arguments'} as the tool's input schema describes and call again",
                     dict(arguments))


_TYPE_WORDS = {"string": "a string", "integer": "an integer", "number": "a number", "boolean": "true or false",
               "array": "a list", "object": "an object", "null": "null"}


def _expected(prop: Mapping[str, Any]) -> str:
    kinds = [prop["type"]] if "type" in prop else [p.get("type") for p in prop.get("anyOf", [])]
    words = [_TYPE_WORDS.get(k, str(k)) for k in kinds if k]
    return " or ".join(dict.fromkeys(words)) or "as its schema says"


_SURROGATE = "holds a lone surrogate (an unpaired \\ud800-\\udfff escape, or U+FFFF), which is not valid UTF-8"
_REMEDY = {
    "holds": "send text as valid Unicode (no unpaired \\ud800-\\udfff escapes, no U+FFFF)",
    "is": "pass integers between -2^63 and 2^63-1 (send larger numbers as text) and finite numbers only",
    "nests": f"flatten the value to at most {MAX_DEPTH} levels",
}


def _hazards(value: Any, path: str, depth: int) -> Iterator[tuple[str, str]]:
    if depth > MAX_DEPTH:
        yield path, f"nests deeper than {MAX_DEPTH} levels"
        return
    if isinstance(value, str):
        if _bad_text(value):
            yield path, _SURROGATE
    elif isinstance(value, bool):
        return
    elif isinstance(value, int):
        if not INT64[0] <= value <= INT64[1]:
            yield path, "is an integer beyond 64 bits, which no driver binds"
    elif isinstance(value, float):
        if not math.isfinite(value):
            yield path, "is not a finite number (NaN or infinity), which no driver binds faithfully"
    elif isinstance(value, Mapping):
        for key, item in value.items():
            sub = f"{path}.{key}" if path else str(key)
            if isinstance(key, str) and _bad_text(key):
                yield _printable(sub), _SURROGATE
                return
            yield from _hazards(item, sub, depth + 1)
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            yield from _hazards(item, f"{path}[{i}]", depth + 1)


def _bad_text(text: str) -> bool:
    if SURROGATE_STAND_IN in text:
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _printable(path: str) -> str:
    return path.encode("utf-8", "backslashreplace").decode("utf-8")


def _loc(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "arguments"
