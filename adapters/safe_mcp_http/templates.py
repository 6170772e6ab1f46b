"""Path templates: `{param}`, `{body.x}`, `{result.x}`, each filled as one URL-encoded path segment.

No I/O. A value can never add a segment, climb out with `..`, start a query or name another host:
every character outside the unreserved set is percent-encoded, and `.`, `..` and empty values are refused.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

__all__ = ["TemplateError", "dotted", "fill_body", "placeholders", "render_path", "segment"]

_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*(\.[A-Za-z0-9_\-]+)*$")


class TemplateError(ValueError):
    """A template names a value the call or the response does not have, or a value is not a segment."""


def placeholders(template: str) -> list[str]:
    names = _PLACEHOLDER.findall(template)
    for name in names:
        if not _NAME.match(name):
            raise TemplateError(f"{{{name}}} is not a placeholder (use {{param}}, {{body.field}} or {{result.field}})")
    if _PLACEHOLDER.sub("", template).count("{") or _PLACEHOLDER.sub("", template).count("}"):
        raise TemplateError(f"unbalanced braces in {template!r}")
    return names


_MISSING = object()


def dotted(doc: Any, path: str) -> Any:
    """The value at `a.b.0.c` in a JSON document, or raise TemplateError naming what is missing."""
    node = doc
    for part in path.split("."):
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise TemplateError(f"no field {path!r}")
    return node


def segment(value: Any, name: str) -> str:
    """One path segment: a string or number, percent-encoded so that it stays one segment."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise TemplateError(f"{{{name}}} must be a string or a number to go into the path, not {type(value).__name__}")
    text = str(value)
    if text in {"", ".", ".."}:
        raise TemplateError(f"{{{name}}} may not be {text!r} in a path (no empty segments, no traversal)")
    return quote(text, safe="-_.~")


def lookup(name: str, params: Mapping[str, Any], sources: Mapping[str, Any]) -> Any:
    head, dot, rest = name.partition(".")
    if dot and head in sources:
        try:
            return dotted(sources[head], rest)
        except TemplateError:
            raise TemplateError(f"{{{name}}}: the {head} has no field {rest!r}") from None
    if name not in params:
        raise TemplateError(f"{{{name}}} needs params.{name}")
    return params[name]


def render_path(template: str, params: Mapping[str, Any], sources: Mapping[str, Any]) -> tuple[str, set[str]]:
    """The path with every placeholder filled, and the names of the params it used.

    `sources` maps "body" and "result" to JSON documents (only those a template may use here).

    Raises:
        TemplateError: a value is missing or cannot be one path segment.
    """
    used: set[str] = set()

    def fill(m: re.Match[str]) -> str:
        name = m.group(1)
        value = lookup(name, params, sources)
        if "." not in name or name.partition(".")[0] not in sources:
            used.add(name)
        return segment(value, name)

    placeholders(template)
    return _PLACEHOLDER.sub(fill, template), used


def fill_body(body: Any, params: Mapping[str, Any], sources: Mapping[str, Any]) -> Any:
    """A JSON body whose string values may be templates: "{result.id}" alone keeps the value's type."""
    if isinstance(body, dict):
        return {k: fill_body(v, params, sources) for k, v in body.items()}
    if isinstance(body, list):
        return [fill_body(v, params, sources) for v in body]
    if isinstance(body, str):
        whole = _PLACEHOLDER.fullmatch(body)
        if whole:
            return lookup(whole.group(1), params, sources)
        return _PLACEHOLDER.sub(lambda m: str(lookup(m.group(1), params, sources)), body)
    return body
