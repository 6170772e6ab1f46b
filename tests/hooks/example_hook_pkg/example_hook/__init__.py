"""A third-party hook, as someone outside safe-mcp would write it: only `safe_mcp.hooks` is imported.

`marker` works on any target: it writes what it was given into its artifact, and each step it takes
is appended to a log beside the artifact, so a test can see every step ran and in which order.
"""

from __future__ import annotations

import json
from pathlib import Path

from safe_mcp.hooks import Artifact, Hook, HookContext, HookFailed


def _log(ctx: HookContext, step: str) -> None:
    ctx.artifact.parent.mkdir(parents=True, exist_ok=True)
    with (ctx.artifact.parent / "marker-steps.log").open("a", encoding="utf-8") as f:
        f.write(f"{step} {ctx.statement} {ctx.table}\n")


class MarkerHook(Hook):
    name = "marker"

    def preview(self, ctx: HookContext) -> str:
        _log(ctx, "preview")
        return f"marker would note {ctx.statement} on {ctx.table}"

    def capture(self, ctx: HookContext) -> Artifact:
        _log(ctx, "capture")
        ctx.artifact.write_text(json.dumps({"target": ctx.target, "kind": ctx.kind, "statement": ctx.statement,
                                            "table": ctx.table, "intent_id": ctx.intent_id}), encoding="utf-8")
        return Artifact(hook=self.name, path=str(ctx.artifact), statement=ctx.statement, table=ctx.table,
                        detail={"written": True})

    def verify(self, ctx: HookContext, artifact: Artifact) -> None:
        _log(ctx, "verify")
        if json.loads(Path(artifact.path).read_text(encoding="utf-8")).get("table") != artifact.table:
            raise HookFailed("the marker names another table")

    def compensate(self, ctx: HookContext, artifact: Artifact) -> str:
        _log(ctx, "compensate")
        return f"marker saw the undo of {artifact.statement} on {artifact.table}"
