"""Undo of an http operation: the compensation recorded right after the write, and running it later.

The record is filled from the response at once (never later from a config that may have changed);
running it first reads the guard, and refuses when the resource moved on since the write.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from safe_mcp.adapter import Budget, Outcome
from safe_mcp.errors import AdapterError, TargetUnavailable
from safe_mcp_http.client import Sender, Unanswered
from safe_mcp_http.operations import Op
from safe_mcp_http.settings import RequestSpec
from safe_mcp_http.templates import TemplateError, dotted, fill_body, render_path

__all__ = ["excerpt", "record", "run"]

Scrub = Callable[[str], str]
_EXCERPT = 300


def record(sender: Sender, scrub: Scrub, op: Op, params: dict[str, Any], body: Any, result: Any,
           key: str) -> dict[str, Any]:
    """How to undo `op`, just run with `params` and `body`, which answered `result`.

    A template the response cannot fill gives a record with `error`: undo then refuses and says so.
    """
    spec = op.compensate
    assert spec is not None
    sources = {"body": body, "result": result}
    out: dict[str, Any] = {"operation": op.name, "method": spec.method, "affected": 1,
                           "idempotency_header": spec.idempotency_header or op.idempotency_header,
                           "key": f"{key}-undo" if key else ""}
    try:
        out["path"], _ = render_path(spec.path, params, sources)
        out["body"] = fill_body(spec.body, params, sources) if spec.body is not None else None
    except TemplateError as exc:
        out["error"] = f"the compensate template could not be filled from the response: {exc}"
        return out
    if op.guard is not None:
        out["guard"] = _guard_now(sender, scrub, op.guard, params, sources)
    return out


def _guard_now(sender: Sender, scrub: Scrub, spec: RequestSpec, params: dict[str, Any],
               sources: dict[str, Any]) -> dict[str, Any]:
    assert spec.field is not None
    guard: dict[str, Any] = {"field": spec.field, "method": spec.method}
    try:
        guard["path"], _ = render_path(spec.path, params, sources)
        resp = sender.send(spec.method, sender.url(guard["path"]), resend=True)
        if not resp.ok:
            raise AdapterError(f"it answered {resp.status}")
        guard["value"] = dotted(resp.body, spec.field)
    except (TemplateError, AdapterError) as exc:
        guard["error"] = scrub(f"the guard could not be read right after the write: {exc}")
    return guard


def run(sender: Sender, scrub: Scrub, compensation: Mapping[str, Any], budget: Budget) -> Outcome:
    """Send the recorded compensation, with its own idempotency key, once the guard agrees. The result
    is the API's answer as it came: the caller scrubs it.

    Raises:
        AdapterError: no usable record, the resource moved on ("conflict"), or the API refused.
        TargetUnavailable: no answer; running undo again sends the same key.
    """
    what = f"undo of {compensation.get('operation')}"
    if compensation.get("error"):
        raise AdapterError(f"cannot run the {what}: {compensation['error']}; undo it on the API by hand")
    guard = compensation.get("guard")
    if guard:
        _check_guard(sender, scrub, guard, what)
    method, path = str(compensation["method"]), str(compensation["path"])
    header, key = compensation.get("idempotency_header"), str(compensation.get("key") or budget.intent_id or "")
    extra = {str(header): key} if header and key else {}
    try:
        resp = sender.send(method, sender.url(path), body=compensation.get("body"), extra=extra, resend=bool(extra))
    except Unanswered as exc:
        raise TargetUnavailable(scrub(f"{what}: {exc}"),
                                "run undo again: it sends the same idempotency key, so it runs at most once"
                                if extra else "check on the API whether the undo ran before running it again") from None
    if not resp.ok:
        raise AdapterError(scrub(f"{what} ({method} {path}) answered {resp.status}: {excerpt(resp.body)}"))
    return Outcome(result={"status": resp.status, "body": resp.body}, affected=1,
                   summary=f"{what}: {method} {path} answered {resp.status}")


def _check_guard(sender: Sender, scrub: Scrub, guard: Mapping[str, Any], what: str) -> None:
    if guard.get("error"):
        raise AdapterError(f"conflict: {guard['error']}, so the {what} cannot tell whether the resource moved on; "
                           "undo it on the API by hand")
    path, field = str(guard["path"]), str(guard["field"])
    resp = sender.send(str(guard.get("method", "GET")), sender.url(path), resend=True)
    if not resp.ok:
        raise AdapterError(scrub(f"conflict: {path} answered {resp.status} ({excerpt(resp.body)}); the resource "
                                 f"changed since the write, so the {what} refuses"))
    try:
        now = dotted(resp.body, field)
    except TemplateError:
        now = None
    if now != guard.get("value"):
        raise AdapterError(scrub(f"conflict: {path} {field} is now {now!r} but the write left {guard.get('value')!r}; "
                                 f"the resource changed since, so the {what} refuses rather than undo newer work"))


def excerpt(body: Any) -> str:
    text = body if isinstance(body, str) else json.dumps(body, default=str)
    return text[:_EXCERPT] + ("..." if len(text) > _EXCERPT else "")
