"""`safe-mcp reconcile`: what a crash left unsettled, and a human's verdict where the target cannot say."""

from __future__ import annotations

import argparse
import getpass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from safe_mcp.gate.runtime import Runtime

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("reconcile", parents=[common], help="settle calls a crash left without an outcome",
                       description="Without arguments: settle what the targets' journals can settle, then list what "
                                   "only a human can. With INTENT_ID and --executed or --not-executed: record a "
                                   "human's verdict on one of those.")
    p.add_argument("intent_id", nargs="?", help="an intent listed by `safe-mcp reconcile`")
    verdict = p.add_mutually_exclusive_group()
    verdict.add_argument("--executed", action="store_true", help="it ran: record it (no undo is recorded)")
    verdict.add_argument("--not-executed", action="store_true", help="it did not run: release its idempotency key")
    p.add_argument("--as", dest="as_name", default=None, help="who settles it (default: the OS user)")


def run(args: argparse.Namespace, rt: Runtime) -> int:
    """Exit 0 when nothing is left unsettled (or the verdict was recorded), 1 otherwise, 2 on usage."""
    from safe_mcp.errors import Refused

    if args.intent_id:
        if not (args.executed or args.not_executed):
            print("safe-mcp: say what happened: --executed or --not-executed", flush=True)
            return 2
        who = args.as_name or getpass.getuser()
        try:
            rid = rt.gate.settle_by_human(args.intent_id, executed=bool(args.executed), by=who)
        except Refused as exc:
            print(f"safe-mcp: {exc.text()}")
            return 1
        print(f"settled {args.intent_id} as {'executed' if args.executed else 'not executed'} by {who} (receipt {rid})")
        return 0
    for intent, became in rt.reconciled:
        print(f"settled from the target's journal: {intent.id} {intent.tool} on {intent.target}: {became}")
    left = rt.store.open_intents()
    if not left:
        print("nothing to reconcile: every call has an outcome")
        return 0
    print(f"{len(left)} call(s) without an outcome:")
    for intent in left:
        what = str(intent.args.get("sql") or intent.args.get("operation") or intent.args.get("subject") or "")[:60]
        print(f"  {intent.id}  {intent.state:<7}  {intent.target}:{intent.tool}  {what}")
        print(f"      session {intent.session}, key {intent.idempotency_key or '-'}, owner {intent.owner}")
    print("check each on its target, then: safe-mcp reconcile INTENT_ID --executed | --not-executed")
    return 1
