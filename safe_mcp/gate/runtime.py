"""Everything one running safe-mcp needs, built from a config: secrets, state store, gate."""

from __future__ import annotations

import hashlib
import logging
import os
from typing import Any

from safe_mcp.effects import Effect
from safe_mcp.errors import StateError
from safe_mcp.gate.pipeline import Gate
from safe_mcp.state.receipts import new_id
from safe_mcp.state.store import StateStore
from safe_mcp.trust.config import Config
from safe_mcp.trust.secrets import Scrubber, resolve_ref

__all__ = ["Runtime", "open_state"]

log = logging.getLogger("safe_mcp")


def open_state(config: Config) -> StateStore:
    """The config's state store: SQLite under `[state] path`, or PostgreSQL at `[state] url`.

    `SAFE_MCP_STATE_URL`, when set and the config names no url, puts the state of every config on that
    PostgreSQL server, each in a schema of its own named from its state path.

    Raises:
        StateError: the store cannot be opened.
        ConfigError: the password reference cannot be resolved.
    """
    url, schema, password = config.state.url, config.state.pg_schema, None
    if url is None and os.environ.get("SAFE_MCP_STATE_URL"):
        url = os.environ["SAFE_MCP_STATE_URL"]
        where = str(config.state_dir.resolve()).encode()
        schema = "s_" + hashlib.sha256(where).hexdigest()[:20]
    if url is None:
        return StateStore(config.state_dir)
    from safe_mcp.state.db import PostgresDb

    # Files beside the state stay local even then: the approvers' key file, adapters' own files (an outbox).
    try:
        config.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise StateError(f"cannot create the state directory {config.state_dir}: {exc}") from None

    if config.state.password:
        password = resolve_ref(config.state.password, source=config.source, key="state.password")
    return StateStore(db=PostgresDb(url, password, schema))


class Runtime:
    """Resolves secrets (failing at start, not mid-call), opens the state store, builds the gate."""

    def __init__(self, config: Config, *, session: str | None = None, reconcile: bool = True) -> None:
        """With `reconcile`, intents left without an outcome by a process that died are settled first,
        from the targets' own journals (see `Gate.reconcile`)."""
        self.config = config
        self.session = session or new_id("sess")
        secrets: dict[str, dict[str, str]] = {}
        for name, target in config.targets.items():
            for key, ref in target.spec.secret_refs(target.settings).items():
                secrets.setdefault(name, {})[key] = resolve_ref(ref, source=config.source, key=f"targets.{name}.{key}")
        self.scrub = Scrubber(v for d in secrets.values() for v in d.values())
        self.store = open_state(config)
        self.gate = Gate(config, self.store, self.scrub, secrets)
        self.approval_page: str | None = None
        """The approval page's URL when this process serves one (set by `serve`), offered to clients that
        take URL-mode elicitation when an action waits for a human."""
        if reconcile:
            self.reconciled = self.gate.reconcile()
            for intent, became in self.reconciled:
                log.warning("reconciled intent %s (%s on %s, left by a process that died): %s",
                            intent.id, intent.tool, intent.target, became)

    def serves(self, tool: str) -> bool:
        return any(tool in t.spec.tools for t in self.config.targets.values())

    def targets_view(self) -> dict[str, Any]:
        rules = self.config.confirm
        out = []
        for t in self.config.targets.values():
            described = t.spec.describe(t.settings)
            confirm = {e.value: rules.for_effect(e).value for e in Effect if e is not Effect.READ}
            if t.access.value == "read-only":
                confirm = {e: ("deny (read-only target)" if e != "forbidden" else "deny") for e in confirm}
            out.append({
                "name": t.name, "kind": t.kind, "access": t.access.value, "tools": sorted(t.spec.tools),
                "limits": t.limits.model_dump(), "confirm": confirm,
                "reaches": described.get("reaches", ""), "compensation": described.get("compensation", ""),
            })
        return {"targets": out, "confirm_ttl_s": rules.ttl_s, "confirm_min_delay_s": rules.min_delay_s}

    def close(self) -> None:
        self.gate.close()
        self.store.close()
