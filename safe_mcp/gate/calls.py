"""Who is calling and exactly what: the identities and digests the pipeline and the approval desk share."""

from __future__ import annotations

import hashlib
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict

from safe_mcp.adapter import Call
from safe_mcp.effects import Effect
from safe_mcp.state.receipts import Receipt, canonical_json
from safe_mcp.state.store import StateStore
from safe_mcp.trust.config import Config
from safe_mcp.trust.secrets import Scrubber

__all__ = ["Caller", "GateServices", "action_digest"]

_DIGEST_DOMAIN = b"safe-mcp/action/v1\x00"


class Caller(BaseModel):
    model_config = ConfigDict(frozen=True)

    session: str
    client: str = "unknown"
    run_id: str | None = None
    """The agent's own name for a run of work (a tool argument on writes); the session when absent."""
    principal: str = "local"
    """Who is calling, across sessions and restarts: the token's name over HTTP/SSE, "local" over stdio
    (whoever can start this server on this state store). The circuit breaker holds for the principal."""


def action_digest(call: Call, policy_digest: str) -> str:
    """Binds a confirmation to exactly this call on this target under this policy."""
    doc = {
        "target": call.target,
        "tool": call.tool,
        "args": {k: v for k, v in call.args.items() if k != "dry_run"},
        "policy": policy_digest,
    }
    return hashlib.sha256(_DIGEST_DOMAIN + canonical_json(doc).encode()).hexdigest()


class GateServices(Protocol):
    """What the approval desk needs of the gate: its config, state, clock, scrubber, and receipts."""

    config: Config
    store: StateStore
    scrub: Scrubber
    policy_digest: str

    def clock(self) -> float: ...

    def record(self, call: Call, caller: Caller, effect: Effect, decision: str, reason: str, outcome: str,
               **extra: Any) -> Receipt: ...

    def refuse(self, call: Call, caller: Caller, effect: Effect, reason: str, remedy: str = "", **extra: Any) -> None: ...
