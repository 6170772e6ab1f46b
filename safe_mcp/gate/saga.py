"""Undo a whole scope (a session, a run, everything since a time) as a saga, newest first.

Each step is an ordinary `Gate.undo`, so each compensation is a receipt of its own. The saga stops
at the first step that cannot be compensated (irreversible, or refused because newer data would be
overwritten) and reports what was and was not undone. Steps already undone are skipped, so running
the same saga twice changes nothing the second time.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from typing import Literal

from pydantic import BaseModel, ConfigDict

from safe_mcp.errors import Refused
from safe_mcp.gate.pipeline import Caller, Gate

__all__ = ["Step", "parse_since", "plan", "run"]

Status = Literal["to_undo", "undone", "already_undone", "irreversible", "failed", "not_reached"]


class Step(BaseModel):
    model_config = ConfigDict(frozen=True)

    receipt_id: str
    time: str
    target: str
    tool: str
    effect: str
    summary: str
    status: Status
    detail: str = ""


def parse_since(text: str) -> str:
    """An ISO time, or a span back from now (`90s`, `15m`, `2h`, `1d`), as an ISO UTC string."""
    m = re.fullmatch(r"(\d+)([smhd])", text.strip())
    if m:
        unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}[m.group(2)]
        when = datetime.now(UTC) - timedelta(**{unit: int(m.group(1))})
    else:
        try:
            when = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise Refused(f"--since {text!r} is neither a time nor a span", "use e.g. 2026-11-22T10:00:00Z or 30m") from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def plan(gate: Gate, *, session: str | None = None, run_id: str | None = None, since: str | None = None) -> list[Step]:
    """Every executed write in scope, newest first, with what undo would do for it."""
    if not (session or run_id or since):
        raise Refused("no scope given", "pass --session S, --run R or --since TIME")
    steps = []
    for _seq, rid, body_text, _hash in gate.store.iter_receipts():
        body = json.loads(body_text)
        if body.get("outcome") != "executed" or body.get("effect") == "read" or body.get("tool") in {"undo", "breaker"}:
            continue
        if session and body.get("session") != session:
            continue
        if run_id and body.get("run_id") != run_id:
            continue
        if since and body.get("time", "") < since:
            continue
        comp = gate.store.compensation_for(rid)
        args = body.get("args", {})
        summary = str(args.get("sql") or args.get("operation") or args.get("subject") or body.get("reason", ""))[:80]
        if comp is None:
            status: Status = "irreversible"
        elif comp[3] == "undone":
            status = "already_undone"
        else:
            status = "to_undo"
        steps.append(Step(receipt_id=rid, time=body["time"], target=body["target"], tool=body["tool"],
                          effect=body["effect"], summary=summary, status=status))
    return list(reversed(steps))


def run(gate: Gate, steps: list[Step], caller: Caller) -> list[Step]:
    """Compensate `steps` in order; stop at the first that cannot be compensated."""
    out: list[Step] = []
    stopped = ""
    for step in steps:
        if stopped:
            out.append(step.model_copy(update={"status": "not_reached", "detail": stopped})
                       if step.status == "to_undo" else step)
            continue
        if step.status == "already_undone":
            out.append(step)
            continue
        if step.status == "irreversible":
            stopped = f"stopped at {step.receipt_id}, which has no compensation"
            out.append(step.model_copy(update={"detail": "no compensation exists; the saga stops here"}))
            continue
        try:
            result = gate.undo(step.receipt_id, caller)
            out.append(step.model_copy(update={"status": "undone", "detail": f"{result.message} ({result.receipt_id})"}))
        except Refused as exc:
            stopped = f"stopped at {step.receipt_id}"
            out.append(step.model_copy(update={"status": "failed", "detail": exc.text()}))
    return out
