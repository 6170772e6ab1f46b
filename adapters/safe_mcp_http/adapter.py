"""HTTP APIs: the declared operations of one origin, each with its effect, idempotency key and undo.

There is no free-form URL: the agent names an operation, and its params fill the path template
(one encoded segment each) and the query string. httpx is imported on first use.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections.abc import Mapping
from typing import Any

from safe_mcp.adapter import Adapter, AdapterSettings, Budget, Call, Classification, Outcome, Preview, Reconciled
from safe_mcp.effects import Effect
from safe_mcp.errors import AdapterError, ConfigError, Drifted, TargetUnavailable, TooManyRows
from safe_mcp.trust.secrets import resolve_ref
from safe_mcp_http import undo
from safe_mcp_http.client import Response, Sender, Unanswered
from safe_mcp_http.openapi import load_document
from safe_mcp_http.operations import Op, table
from safe_mcp_http.settings import HttpSettings, HttpSpec, RequestSpec
from safe_mcp_http.templates import TemplateError, dotted, placeholders, render_path

__all__ = ["HttpAdapter"]

_ARGS = frozenset({"operation", "params", "body", "idempotency_key", "dry_run"})
_KEY = re.compile(r"[\x20-\x7e]{1,200}")


class HttpAdapter(HttpSpec, Adapter):
    def __init__(self, name: str, settings: AdapterSettings, secrets: Mapping[str, str], *,
                 base_dir: str, state_dir: str) -> None:
        super().__init__(name, settings, secrets, base_dir=base_dir, state_dir=state_dir)
        assert isinstance(settings, HttpSettings)
        self.s = settings
        self._lock = threading.Lock()
        self._ops: dict[str, Op] | None = None
        self._unavailable = ""
        headers = self._resolve_headers()
        # The whole value, and the token after a scheme ("Bearer ..."), which an API may echo on its own.
        hidden = {v for v in headers.values() if len(v) >= 4} | {
            v.partition(" ")[2] for v in headers.values() if len(v.partition(" ")[2]) >= 6}
        self._hidden = sorted(hidden, key=len, reverse=True)
        self.sender = Sender(self.s.base_url, headers, timeout_s=self.s.timeout_s,
                             connect_timeout_s=self.s.connect_timeout_s, max_bytes=self.s.max_response_bytes,
                             retries=self.s.retries, verify=self.s.verify_tls)

    def _resolve_headers(self) -> dict[str, str]:
        out = {}
        for header, ref in self.s.headers.items():
            value = self.secrets.get(f"headers.{header}")
            if value is None:
                try:
                    value = resolve_ref(ref, source="config", key=f"targets.{self.name}.headers.{header}")
                except ConfigError as exc:
                    self._unavailable = f"{exc.key}: {exc.problem}" + (f" (fix: {exc.fix})" if exc.fix else "")
                    continue
            out[header] = value
        return out

    # -------------------------------------------------------------- the operation table

    def operations(self) -> dict[str, Op]:
        """Declared operations, with the OpenAPI document's (loaded once, on first use).

        Raises:
            TargetUnavailable: the document cannot be read or is not OpenAPI 3.
        """
        with self._lock:
            if self._ops is None:
                imported = None
                if self.s.openapi:
                    imported = load_document(self.s.openapi, base_dir=self.base_dir, sender=self.sender,
                                             allowed_hosts=self.s.allowed_hosts)
                try:
                    self._ops = table(self.s.operations, imported)
                except ValueError as exc:
                    raise TargetUnavailable(f"the operations of target {self.name!r} are invalid: {exc}",
                                            "fix the [[operations]] entries or the OpenAPI document") from None
            return self._ops

    def _op(self, call: Call) -> tuple[Op, dict[str, Any], Any]:
        extra = sorted(set(call.args) - _ARGS)
        if extra:
            raise AdapterError(f"http_call takes no {', '.join(extra)}; it takes operation, params, body, "
                               "idempotency_key, dry_run")
        name = call.args.get("operation")
        ops = self.operations()
        if not isinstance(name, str) or name not in ops:
            raise AdapterError(f"target {self.name!r} has no operation {name!r}; it can call: "
                               f"{', '.join(sorted(ops)) or 'nothing'} (only declared operations run)")
        key = call.args.get("idempotency_key")
        if key is not None and (not isinstance(key, str) or not _KEY.fullmatch(key)):
            raise AdapterError("idempotency_key must be 1 to 200 printable ASCII characters (it is sent as a header)")
        params = call.args.get("params") or {}
        if not isinstance(params, dict):
            raise AdapterError("params must be an object: values for the path placeholders and the query string")
        return ops[name], dict(params), call.args.get("body")

    def _request(self, op: Op, params: dict[str, Any], body: Any) -> tuple[str, str]:
        """(path, url) of the operation itself; checks every template the call will need, except {result.x}.

        Raises:
            AdapterError: a param or body field is missing, or a value cannot be one path segment.
        """
        if body is not None and not op.takes_body:
            raise AdapterError(f"{op.name} ({op.method}) takes no body")
        try:
            path, used = render_path(op.path, params, {"body": body})
            for spec in (op.preview, op.compensate, op.guard):
                if spec is not None:
                    _check_known(spec, params, body)
        except TemplateError as exc:
            raise AdapterError(f"{op.name}: {exc}") from None
        query = {k: v for k, v in params.items() if k not in used}
        if op.query is not None and set(query) - set(op.query):
            raise AdapterError(f"{op.name} takes no param(s) {', '.join(sorted(set(query) - set(op.query)))}; "
                               f"its query params are: {', '.join(op.query) or 'none'}")
        return path, self.sender.url(path, query)

    # -------------------------------------------------------------- contract

    def classify(self, call: Call) -> Classification:
        op, params, body = self._op(call)
        if self._unavailable:
            raise TargetUnavailable(f"the headers of target {self.name!r} cannot be resolved: {self._unavailable}",
                                    "set the secret, then restart safe-mcp")
        path, _ = self._request(op, params, body)
        detail = {"operation": op.name, "method": op.method, "path": path, "path_template": op.path,
                  "host": self.sender.origin[1], "key": f"{self.name}:{op.name}"}
        return Classification(effect=op.effect, reason=f"{op.name}: {op.why}", summary=f"{op.method} {path}",
                              detail=detail, compensable=op.compensable)

    def preview(self, call: Call, classification: Classification, budget: Budget) -> Preview:
        op, params, body = self._op(call)
        path, _ = self._request(op, params, body)
        if classification.effect is Effect.READ:
            return Preview(effect=Effect.READ, affected=0, notes=["reads change nothing"])
        return self._measure(op, params, body, path, classification.effect, budget)

    def _measure(self, op: Op, params: dict[str, Any], body: Any, path: str, effect: Effect, budget: Budget) -> Preview:
        request = self._scrub({"method": op.method, "url": self.sender.base + path, "body": body})
        notes = [f"{op.name}: {op.why}"]
        if op.compensate is not None:
            notes.append(f"undo sends {op.compensate.method} {op.compensate.path}")
        if op.preview is None:
            notes.append("no preview is declared for this operation: safe-mcp cannot show what it will change")
            return Preview(effect=effect, affected=1, sample=[{"request": request}], notes=notes)
        spec = op.preview
        try:
            ppath, _ = render_path(spec.path, params, {"body": body})
        except TemplateError as exc:
            raise AdapterError(f"{op.name} preview: {exc}") from None
        resp = self.sender.send(spec.method, self.sender.url(ppath), max_bytes=budget.bytes_returned, resend=True)
        if not resp.ok:
            raise AdapterError(self._text(f"the preview {spec.method} {ppath} answered {resp.status}: "
                                          f"{undo.excerpt(resp.body)}"))
        shown = self._scrub(resp.body)
        affected = 1
        if spec.count:
            try:
                affected = int(dotted(resp.body, spec.count))
            except (TemplateError, TypeError, ValueError):
                raise AdapterError(f"the preview of {op.name} has no number at {spec.count!r}") from None
        elif isinstance(resp.body, list):
            affected = len(resp.body)
        fingerprint = hashlib.sha256(json.dumps(resp.body, sort_keys=True, default=str).encode()).hexdigest()
        notes.append(f"the preview is {spec.method} {ppath} as it is now; at confirm it is read again and must not "
                     "have changed")
        return Preview(effect=effect, affected=affected, sample=[{"request": request, "now": shown}], notes=notes,
                       fingerprint=fingerprint)

    def execute(self, call: Call, classification: Classification, budget: Budget) -> Outcome:
        op, params, body = self._op(call)
        path, url = self._request(op, params, body)
        if classification.effect is Effect.READ:
            return self._read(op, path, url, budget)
        if op.preview is not None and (op.preview.count or (budget.expect and budget.expect.fingerprint)):
            now = self._measure(op, params, body, path, classification.effect, budget)
            if budget.expect is not None and budget.expect.fingerprint and now.fingerprint != budget.expect.fingerprint:
                raise Drifted(classification.effect, f"{op.name}: what the preview shows changed since it was "
                                                     "confirmed; nothing was sent", now)
            if now.affected is not None and now.affected > budget.rows_affected:
                raise TooManyRows(now.affected, budget.rows_affected)
        key = str(call.args.get("idempotency_key") or budget.intent_id or "")
        extra = {op.idempotency_header: key} if op.idempotency_header and key else {}
        try:
            resp = self.sender.send(op.method, url, body=body, extra=extra, resend=bool(extra))
        except Unanswered as exc:
            raise TargetUnavailable(self._text(str(exc)), _retry_remedy(op, key)) from None
        self._raise_for_status(resp, f"{op.name} ({op.method} {path})", op, key)
        # Scrubbed like the result: the record is stored, and a secret must never reach the state store.
        compensation = self._scrub(undo.record(self.sender, self._text, op, params, body, resp.body, key)) \
            if op.compensate else None
        result: dict[str, Any] = {"status": resp.status, "body": self._scrub(resp.body)}
        if resp.truncated:
            result["truncated"] = True
        if extra:
            result["idempotency_key"] = key
        summary = f"{op.name}: {op.method} {path} answered {resp.status}"
        if compensation and compensation.get("error"):
            summary += f" (undo will refuse: {compensation['error']})"
        return Outcome(result=result, affected=1, compensation=compensation, summary=summary)

    def _read(self, op: Op, path: str, url: str, budget: Budget) -> Outcome:
        resp = self.sender.send(op.method, url, max_bytes=min(budget.bytes_returned, self.s.max_response_bytes),
                                resend=True)
        self._raise_for_status(resp, f"{op.name} ({op.method} {path})", op, "")
        result: dict[str, Any] = {"status": resp.status, "body": self._scrub(resp.body)}
        if resp.truncated:
            result["truncated"] = True
        return Outcome(result=result, summary=f"{op.name}: {op.method} {path}" + (" (truncated)" if resp.truncated
                                                                                   else ""))

    def _raise_for_status(self, resp: Response, what: str, op: Op, key: str) -> None:
        if resp.ok:
            return
        text = self._text(f"{what} answered {resp.status}: {undo.excerpt(resp.body)}")
        if resp.status >= 500 and op.effect is not Effect.READ:
            raise TargetUnavailable(text, _retry_remedy(op, key))
        raise AdapterError(text)

    def compensate(self, compensation: Mapping[str, Any], budget: Budget) -> Outcome:
        done = undo.run(self.sender, self._text, compensation, budget)
        return done.model_copy(update={"result": self._scrub(done.result)})

    def reconcile(self, intent_id: str, call: Call) -> Reconciled:
        """Never re-sent to find out: only the API can say, looked up by the key the request carried."""
        if call.tool == "undo":
            return Reconciled(state="unknown", detail=(
                f"ask {self.s.base_url} whether the undo of receipt {call.args.get('receipt_id')} ran; where the "
                "operation declares an idempotency_header, undo sends the same key each time, so the API runs it once"))
        name = call.args.get("operation")
        # Idempotency headers are only ever declared in the config, so no document needs loading here.
        header = next((o.idempotency_header for o in self.s.operations if o.name == name), None)
        key = call.args.get("idempotency_key") or intent_id
        how = f" with {header}: {key}" if header else f" (it carried no idempotency key; intent {intent_id})"
        return Reconciled(state="unknown", detail=f"ask {self.s.base_url} whether operation {name!r} ran{how}")

    def close(self) -> None:
        self.sender.close()

    # -------------------------------------------------------------- secrets

    def _text(self, text: str) -> str:
        for value in self._hidden:
            text = text.replace(value, "[redacted]")
        return text

    def _scrub(self, value: Any) -> Any:
        if isinstance(value, str):
            return self._text(value)
        if isinstance(value, dict):
            return {self._text(str(k)): self._scrub(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self._scrub(v) for v in value]
        return value


def _check_known(spec: RequestSpec, params: dict[str, Any], body: Any) -> None:
    """Every {param} and {body.x} a preview, guard or compensation needs must be there before anything runs."""
    names = placeholders(spec.path)
    for name in names:
        head = name.partition(".")[0] if "." in name else ""
        if head == "result":
            continue
        if head == "body":
            dotted(body, name.partition(".")[2])
        elif name not in params:
            raise TemplateError(f"{{{name}}} needs params.{name}")


def _retry_remedy(op: Op, key: str) -> str:
    if op.idempotency_header and key:
        return (f"retry with idempotency_key={key!r}: the request carried {op.idempotency_header}: {key}, so the API "
                "runs it at most once")
    return ("check on the API whether it ran before trying again: this operation has no idempotency_header, so a "
            "retry may run it twice")
