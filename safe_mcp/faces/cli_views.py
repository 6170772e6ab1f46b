"""What `safe-mcp pending` and `safe-mcp receipts list` print: tables for people, JSON for machines."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from safe_mcp.faces.cli_table import plural, table

if TYPE_CHECKING:
    from safe_mcp.gate.gameday import Row
    from safe_mcp.state.receipts import Receipt
    from safe_mcp.state.store import PendingAction

__all__ = ["iso", "one_line", "pending_doc", "render_pending", "render_pending_one", "render_receipts", "time_left"]

_PREVIEW_CHARS = 100


def iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def time_left(seconds: float) -> str:
    if seconds <= 0:
        return "expired"
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def state_of(a: PendingAction, now: float) -> str:
    """The stored state, except that a pending action past its expiry is `expired` (confirm refuses it)."""
    return "expired" if a.state == "pending" and a.expires <= now else a.state


def one_line(a: PendingAction) -> str:
    """What the action would do, on one line: the statement, operation or message, and its measured size."""
    args = a.call
    if args.get("sql"):
        what = str(args["sql"])
    elif args.get("operation"):
        what = f"{args.get('service', '')} {args['operation']} {json.dumps(args.get('params', {}), sort_keys=True)}"
    elif args.get("subject") is not None:
        what = f"mail to {', '.join(args.get('to') or [])}: {args['subject']!r}"
    else:
        what = f"{a.tool} {json.dumps(args, sort_keys=True)}"
    what = " ".join(what.split())
    if len(what) > _PREVIEW_CHARS:
        cut = what[:_PREVIEW_CHARS].rsplit(" ", 1)[0]
        what = cut + " ..."
    affected = a.preview.get("affected")
    unit = "row" if a.tool.startswith("sql") else "item"
    return what + (f" ({plural(affected, unit)})" if isinstance(affected, int) else "")


def pending_doc(a: PendingAction, now: float) -> dict[str, Any]:
    """One action for `--json`: ISO times, seconds left, and the effective state (never the digest)."""
    doc = a.model_dump(mode="json", exclude={"digest"})
    doc.update(created=iso(a.created), not_before=iso(a.not_before), expires=iso(a.expires),
               seconds_left=max(0, round(a.expires - now)), state=state_of(a, now))
    return doc


def render_pending(actions: list[PendingAction], now: float, width: int | None, *, shown_expired: bool,
                   approved: dict[str, list[str]] | None = None) -> str:
    live = [a for a in actions if state_of(a, now) != "expired"]
    expired = [a for a in actions if state_of(a, now) == "expired"]
    listed = actions if shown_expired else live
    lines = []
    if listed:
        lines.append(table(
            ["action", "target", "effect", "needs", "created", "left", "would do"],
            [[a.id, a.target, a.effect,
              a.confirm_by + (f" (approved: {', '.join((approved or {})[a.id])})" if (approved or {}).get(a.id) else ""),
              iso(a.created).replace("T", " ").rstrip("Z"),
              time_left(a.expires - now), one_line(a)] for a in listed], width=width))
        lines.append("")
    summary = f"{plural(len(live), 'action')} waiting"
    if expired:
        summary += (f"; {len(expired)} expired (listed as 'expired'; confirm refuses them)" if shown_expired
                    else f"; {len(expired)} expired and hidden (--all lists them)")
    lines.append(summary)
    if live:
        lines.append("times are UTC; `safe-mcp pending ID` shows one in full; approve with `safe-mcp approve ID --as NAME`")
    return "\n".join(lines)


def render_pending_one(a: PendingAction, now: float) -> str:
    args = a.call
    lines = [f"action:   {a.id}", f"state:    {state_of(a, now)}", f"target:   {a.target} ({a.tool})",
             f"effect:   {a.effect}, needs {a.confirm_by} confirmation",
             f"created:  {iso(a.created)}", f"expires:  {iso(a.expires)} ({time_left(a.expires - now)} left)",
             f"receipt:  {a.receipt_id}", "call:"]
    lines += ["  " + line for line in json.dumps(args, indent=2, ensure_ascii=False).splitlines()]
    p = a.preview
    lines.append("preview:")
    if isinstance(p.get("affected"), int):
        lines.append(f"  {plural(p['affected'], 'row' if a.tool.startswith('sql') else 'item')} would change")
    lines += [f"  note: {n}" for n in p.get("notes", [])]
    for row in p.get("sample", []):
        lines.append(f"  sample: {json.dumps(row, ensure_ascii=False, sort_keys=True)}")
    return "\n".join(lines)


def render_receipts(receipts: list[Receipt], total: int, width: int | None) -> str:
    rows = [[r.id, r.time[:19].replace("T", " "), r.outcome, r.effect, f"{r.target}:{r.tool}",
             "" if r.affected is None else str(r.affected), r.reason] for r in receipts]
    out = [table(["receipt", "time (UTC)", "outcome", "effect", "target:tool", "affected", "reason"], rows, width=width)
           ] if rows else []
    more = " (the newest; --limit N shows more)" if total > len(receipts) else ""
    out.append(f"{plural(len(receipts), 'receipt')} of {total}{more}")
    return "\n".join(out)


def render_gameday(rows: list[Row], width: int | None = None) -> str:
    """The results as a table (wrapped to `width` on a terminal) and a closing verdict line."""
    verdict = {None: "NOT PLAYED", True: "pass", False: "FAIL"}
    out = [table(["scenario", "target", "result", "what happened", "expected"],
                 [[r.scenario, r.target, verdict[r.passed], r.happened, r.expected] for r in rows], width=width), ""]
    failed = [r for r in rows if r.passed is False]
    unplayed = [r for r in rows if r.passed is None]
    played = sum(r.passed is True for r in rows)
    if failed:
        out.append(f"FAIL: {plural(len(failed), 'scenario')} would have done damage: "
                   + ", ".join(f"{r.scenario} on {r.target}" for r in failed))
    if unplayed:
        out.append(f"INCOMPLETE: {plural(len(unplayed), 'scenario group')} could not be played, so nothing is known "
                   "about them: " + ", ".join(f"{r.scenario} on {r.target}" for r in unplayed)
                   + "; make the target reachable (or give it data) and run gameday again")
    if not rows:
        out.append("INCOMPLETE: no scenario applies to the targets of this config")
    if rows and not failed and not unplayed:
        out.append(f"ok: all {plural(played, 'scenario')} contained")
    elif played:
        out.append(f"{plural(played, 'scenario')} contained")
    return "\n".join(out)
