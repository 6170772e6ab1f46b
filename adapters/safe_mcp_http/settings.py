"""The keys of an http target (pure pydantic: importing it loads no HTTP library)."""

from __future__ import annotations

import fnmatch
import re
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from safe_mcp.adapter import AdapterSettings, AdapterSpec
from safe_mcp_http.templates import placeholders

__all__ = ["HttpSettings", "HttpSpec", "Operation", "RequestSpec"]

# The same reference syntax as every other secret key (safe_mcp.trust.config.SECRET_REF).
SECRET_REF = re.compile(r"^(keyring|env):[A-Za-z0-9_.\-/]+$")
_HEADER = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")
_NAME = r"^[A-Za-z_][A-Za-z0-9_.\-]{0,127}$"
METHODS = ("GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE")
# Headers safe-mcp sets itself; configuring them would let the config steer the transport.
_RESERVED = frozenset({"host", "content-length", "transfer-encoding", "connection", "content-type"})


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _path(value: str, allowed: tuple[str, ...], where: str) -> str:
    if not value.startswith("/") or value.startswith("//"):
        raise ValueError(f"{where} must be a path starting with one /, e.g. /v1/refunds (the host is base_url's)")
    if any(c in value for c in "?#\\ \t\r\n"):
        raise ValueError(f"{where} may not hold a query, fragment, backslash or whitespace; params fill the query")
    for name in placeholders(value):
        head = name.partition(".")[0] if "." in name else ""
        if head and head not in allowed:
            raise ValueError(f"{where}: {{{name}}} is not available here (use {{param}}"
                             + "".join(f", {{{a}.field}}" for a in allowed) + ")")
    return value


class RequestSpec(_Strict):
    """A request of its own: the preview, the compensation or the guard of an operation."""

    method: str = Field(description="GET for preview and guard; any method for compensate")
    path: str = Field(description="a path template under base_url: {param}, {body.x}, {result.x}")
    body: dict[str, Any] | None = Field(None, description='JSON body; string values may be templates, e.g. "{result.id}"')
    field: str | None = Field(None, description="guard: the dotted field of the GET's JSON that must not have moved on")
    count: str | None = Field(None, description="preview: the dotted field holding how many items would change")
    idempotency_header: str | None = Field(None, description="compensate: header carrying its own key "
                                                             "(default: the operation's idempotency_header)")

    @field_validator("method")
    @classmethod
    def _method(cls, v: str) -> str:
        if v.upper() not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}")
        return v.upper()


class Operation(_Strict):
    """One operation the agent may call. Nothing else on the API can be reached."""

    name: str = Field(pattern=_NAME, description="what the agent passes as `operation` (the operationId with openapi)")
    method: str | None = Field(None, description="GET, HEAD, POST, PUT, PATCH, DELETE (optional with openapi)")
    path: str | None = Field(None, description="path template under base_url, e.g. /v1/volumes/{id} (optional with openapi)")
    effect: Literal["read", "write", "destructive", "irreversible", "forbidden"] | None = Field(
        None, description="never weaker than the method implies; the stricter of the two applies")
    idempotency_header: str | None = Field(None, description="header that carries the call's idempotency key, "
                                                             'e.g. "Idempotency-Key"')
    query: tuple[str, ...] | None = Field(None, description="params allowed in the query string; absent: any param "
                                                            "not used by the path")
    body: bool | None = Field(None, description="whether the operation takes a JSON body; absent: any method but "
                                                "GET, HEAD and DELETE does")
    preview: RequestSpec | None = Field(None, description="a GET showing what the operation will change")
    compensate: RequestSpec | None = Field(None, description="the request that undoes it, templated from the result")
    guard: RequestSpec | None = Field(None, description="a GET whose `field` must still equal what the operation left, "
                                                        "or undo refuses")

    @field_validator("method")
    @classmethod
    def _method(cls, v: str | None) -> str | None:
        if v is not None and v.upper() not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}")
        return None if v is None else v.upper()

    @field_validator("idempotency_header")
    @classmethod
    def _header(cls, v: str | None) -> str | None:
        if v is not None and (not _HEADER.match(v) or v.lower() in _RESERVED or v.lower() == "authorization"):
            raise ValueError(f"{v!r} is not a header name safe-mcp may set")
        return v

    @model_validator(mode="after")
    def _templates(self) -> Operation:
        if self.path is not None:
            _path(self.path, ("body",), "path")
        if self.preview is not None:
            _path(self.preview.path, ("body",), "preview.path")
            if self.preview.method not in {"GET", "HEAD"}:
                raise ValueError("preview.method must be GET or HEAD: a preview changes nothing")
        if self.guard is not None:
            _path(self.guard.path, ("body", "result"), "guard.path")
            if self.guard.method not in {"GET", "HEAD"} or not self.guard.field:
                raise ValueError('guard must be a GET with field = "dotted.path" of the value undo checks')
        if self.compensate is not None:
            _path(self.compensate.path, ("body", "result"), "compensate.path")
        return self


class HttpSettings(AdapterSettings):
    base_url: str = Field(pattern=r"^https?://[^/\s?#@]+(/[^\s?#]*)?$",
                          description="every request goes to this origin, under this path; no user:password@")
    headers: dict[str, str] = Field(default_factory=dict,
                                    description='secret references only, e.g. { Authorization = "env:BILLING_TOKEN" }; '
                                                "the resolved value is sent and never shown")
    operations: tuple[Operation, ...] = Field((), description="the operations the agent may call")
    openapi: str | None = Field(None, description="an OpenAPI 3 JSON document (path relative to the config, or an "
                                                  "http(s) URL on an allowed host) whose operations are imported")
    allowed_hosts: tuple[str, ...] | None = Field(None, description="host globs base_url and openapi may name; "
                                                                    "absent: base_url's host only")
    timeout_s: float = Field(10.0, gt=0, le=600, description="seconds to wait for a response")
    connect_timeout_s: float = Field(5.0, gt=0, le=120, description="seconds to wait for a connection")
    max_response_bytes: int = Field(1_048_576, ge=1024, description="a response is read up to this size, then truncated")
    retries: int = Field(2, ge=0, le=10, description="resends after a timeout or lost connection, only of requests "
                                                     "that carry an idempotency header (the same key each time)")
    verify_tls: bool = Field(True, description="check the server's certificate (https)")
    insecure_http: bool = Field(False, description="allow headers over plain http:// to a host other than loopback "
                                                   "(they would cross the network in clear text)")

    @field_validator("headers")
    @classmethod
    def _refs(cls, v: dict[str, str]) -> dict[str, str]:
        for name, ref in v.items():
            if not _HEADER.match(name) or name.lower() in _RESERVED:
                raise ValueError(f"{name!r} is not a header name safe-mcp may set")
            if not isinstance(ref, str) or not SECRET_REF.match(ref):
                raise ValueError(f'headers.{name}: secrets may not be written in the config; use a reference: '
                                 f'{name} = "env:VAR" or "keyring:NAME" (`safe-mcp secrets set NAME`), holding the '
                                 "whole header value")
        return v

    @model_validator(mode="after")
    def _operations(self) -> HttpSettings:
        host = (urlsplit(self.base_url).hostname or "").lower()
        loopback = host in {"localhost", "::1"} or host.startswith("127.")
        if self.headers and self.base_url.startswith("http://") and not loopback and not self.insecure_http:
            raise ValueError("the headers would cross the network in clear text over http://; use https://, or set "
                             "insecure_http = true if this network is trusted")
        if self.allowed_hosts is not None and not any(fnmatch.fnmatchcase(host, p.lower()) for p in self.allowed_hosts):
            raise ValueError(f"base_url's host {host!r} is not in allowed_hosts")
        seen: set[str] = set()
        for op in self.operations:
            if op.name in seen:
                raise ValueError(f"operation {op.name!r} is declared twice")
            seen.add(op.name)
            if self.openapi is None and (op.method is None or op.path is None):
                raise ValueError(f"operation {op.name!r} needs method and path (or an openapi document that has it)")
        if not self.operations and self.openapi is None:
            raise ValueError("declare [[targets.NAME.operations]] or openapi = FILE: nothing else can be called")
        return self

    @classmethod
    def model_json_schema(cls, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """Self-contained: nested models inlined, so the schema can sit inside the config schema as is."""
        schema = super().model_json_schema(*args, **kwargs)
        defs = schema.pop("$defs", {})

        def inline(node: Any) -> Any:
            if isinstance(node, dict):
                ref = node.get("$ref")
                if isinstance(ref, str) and ref.rpartition("/")[2] in defs:
                    return inline({**defs[ref.rpartition("/")[2]], **{k: v for k, v in node.items() if k != "$ref"}})
                return {k: inline(v) for k, v in node.items()}
            if isinstance(node, list):
                return [inline(v) for v in node]
            return node

        result: dict[str, Any] = inline(schema)
        return result


class HttpSpec(AdapterSpec):
    kind = "http"
    settings_model = HttpSettings
    tools = frozenset({"http_call"})
    # `headers` is a table of references, which the core resolves only for top-level keys today:
    # the adapter resolves them itself (`_resolve_headers`) and scrubs every value it returns.
    # `secret_refs` names them for a core that asks (then they are resolved at start and scrubbed everywhere).
    secret_keys = frozenset()

    @classmethod
    def secret_refs(cls, settings: AdapterSettings) -> dict[str, str]:
        """Every secret reference of `settings` by dotted key ("headers.Authorization"), the key under which
        the resolved value is looked up in `secrets`."""
        assert isinstance(settings, HttpSettings)
        return {f"headers.{name}": ref for name, ref in sorted(settings.headers.items())}

    @classmethod
    def describe(cls, settings: AdapterSettings) -> dict[str, str]:
        assert isinstance(settings, HttpSettings)
        from safe_mcp_http.operations import effect_of

        ops = []
        for op in settings.operations:
            if op.method and op.path:
                effect, _ = effect_of(op.method, op.effect, op.compensate is not None)
                ops.append(f"{op.name} ({op.method} {op.path}): {effect.value}")
            else:
                ops.append(f"{op.name} (from the OpenAPI document): declared {op.effect or 'by method'}")
        imported = (f"; with the operations of {settings.openapi} (reads run, the others are irreversible unless an "
                    "entry above declares their undo)") if settings.openapi else ""
        undo = [f"{op.name}: {op.compensate.method} {op.compensate.path}" for op in settings.operations if op.compensate]
        return {
            "reaches": f"{settings.base_url}; operations: {'; '.join(ops) or 'none declared'}{imported}",
            "compensation": ("undo sends " + "; ".join(undo)) if undo else "none: every change is irreversible",
            "hosts": ", ".join(settings.allowed_hosts) if settings.allowed_hosts else "base_url's host only",
            "headers": (", ".join(sorted(settings.headers)) + " (secret references; values never shown)")
            if settings.headers else "none",
        }
