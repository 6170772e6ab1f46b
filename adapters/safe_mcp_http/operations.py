"""The operation table of a target: declared operations, merged with an OpenAPI 3 document, and their effects.

No I/O here: the OpenAPI document arrives already parsed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict

from safe_mcp.effects import Effect
from safe_mcp_http.settings import METHODS, Operation, RequestSpec
from safe_mcp_http.templates import TemplateError, placeholders

__all__ = ["Op", "effect_of", "from_openapi", "table"]

_METHOD_EFFECT = {"GET": Effect.READ, "HEAD": Effect.READ, "OPTIONS": Effect.READ,
                  "POST": Effect.WRITE, "PUT": Effect.WRITE, "PATCH": Effect.WRITE, "DELETE": Effect.DESTRUCTIVE}


class Op(BaseModel):
    """One callable operation as it will run: method and path fixed, effect decided."""

    model_config = ConfigDict(frozen=True)

    name: str
    method: str
    path: str
    effect: Effect
    why: str
    idempotency_header: str | None = None
    query: tuple[str, ...] | None = None
    takes_body: bool = True
    preview: RequestSpec | None = None
    compensate: RequestSpec | None = None
    guard: RequestSpec | None = None
    source: str = "config"

    @property
    def compensable(self) -> bool:
        return self.compensate is not None and self.effect in {Effect.WRITE, Effect.DESTRUCTIVE}


def effect_of(method: str, declared: str | None, compensate: bool) -> tuple[Effect, str]:
    """The stricter of the declared effect and the method's; a change with no compensation is irreversible."""
    by_method = _METHOD_EFFECT.get(method, Effect.IRREVERSIBLE)
    effect, why = by_method, f"{method} is a {by_method.value}"
    if declared is not None and Effect(declared).rank > by_method.rank:
        effect, why = Effect(declared), f"declared {declared} ({method} alone would be {by_method.value})"
    if effect in {Effect.WRITE, Effect.DESTRUCTIVE} and not compensate:
        effect, why = Effect.IRREVERSIBLE, f"{why}, and no compensate is declared, so it cannot be undone"
    return effect, why


def from_openapi(doc: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """operationId -> {method, path, query, path_params, takes_body} from an OpenAPI 3 document.

    Raises:
        ValueError: not an OpenAPI 3 document, or an operation path that is not a template.
    """
    if not isinstance(doc, Mapping) or not str(doc.get("openapi", "")).startswith("3"):
        raise ValueError('not an OpenAPI 3 document (no "openapi": "3.x" at the top)')
    paths = doc.get("paths")
    if not isinstance(paths, Mapping):
        raise ValueError('the document has no "paths" object')
    out: dict[str, dict[str, Any]] = {}
    for path, item in paths.items():
        if not isinstance(item, Mapping) or not isinstance(path, str) or not path.startswith("/"):
            continue
        shared = item.get("parameters") or []
        for method, spec in item.items():
            if method.upper() not in METHODS or not isinstance(spec, Mapping):
                continue
            op_id = spec.get("operationId")
            if not isinstance(op_id, str) or not op_id:
                continue  # without an operationId the agent could not name it: not callable
            try:
                placeholders(path)
            except TemplateError as exc:
                raise ValueError(f"{op_id}: {exc}") from None
            params = [_deref(doc, p) for p in [*shared, *(spec.get("parameters") or [])]]
            out[op_id] = {
                "method": method.upper(), "path": path,
                "query": tuple(str(p.get("name")) for p in params if p.get("in") == "query"),
                "takes_body": "requestBody" in spec,
            }
    return out


def _deref(doc: Mapping[str, Any], node: Any) -> Mapping[str, Any]:
    """A parameter, following a local `$ref` (e.g. "#/components/parameters/Limit"); {} when it cannot be
    followed, so that parameter is simply not accepted."""
    for _ in range(8):
        if not isinstance(node, Mapping):
            return {}
        ref = node.get("$ref")
        if not isinstance(ref, str):
            return node
        if not ref.startswith("#/"):
            return {}
        target: Any = doc
        for part in ref[2:].split("/"):
            part = part.replace("~1", "/").replace("~0", "~")
            target = target.get(part) if isinstance(target, Mapping) else None
        node = target
    return {}


def table(declared: tuple[Operation, ...], imported: Mapping[str, Mapping[str, Any]] | None) -> dict[str, Op]:
    """Every callable operation by name: imported ones, with the declared entries' keys on top.

    Raises:
        ValueError: a declared operation has no method or path, in the config or the document.
    """
    ops: dict[str, Op] = {}
    by_name = {op.name: op for op in declared}
    for name in [*(imported or {}), *(n for n in by_name if n not in (imported or {}))]:
        base = dict((imported or {}).get(name, {}))
        entry = by_name.get(name)
        method = (entry.method if entry and entry.method else None) or base.get("method")
        path = (entry.path if entry and entry.path else None) or base.get("path")
        if not method or not path:
            raise ValueError(f"operation {name!r} has no method and path, in the config or the OpenAPI document")
        effect, why = effect_of(method, entry.effect if entry else None, bool(entry and entry.compensate))
        query = entry.query if entry and entry.query is not None else base.get("query")
        takes_body = (entry.body if entry and entry.body is not None else
                      base.get("takes_body", method not in {"GET", "HEAD", "DELETE", "OPTIONS"}))
        ops[name] = Op(
            name=name, method=method, path=path, effect=effect, why=why,
            idempotency_header=entry.idempotency_header if entry else None, query=query, takes_body=takes_body,
            preview=entry.preview if entry else None, compensate=entry.compensate if entry else None,
            guard=entry.guard if entry else None, source="openapi" if name in (imported or {}) else "config",
        )
    return ops
