"""The blast-radius inventory printed by `safe-mcp check`: what every target can touch."""

from __future__ import annotations

from typing import Any

from safe_mcp.config import Access, Config
from safe_mcp.effects import Effect
from safe_mcp.policy import Verdict, decide

__all__ = ["inventory", "render_text"]


def inventory(config: Config) -> dict[str, Any]:
    """A plain-data description of every target; no connection is made."""
    targets = []
    for t in config.targets.values():
        effects = {}
        for e in Effect:
            d = decide(e, t, config.confirm)
            effects[e.value] = (
                "allowed" if d.verdict is Verdict.ALLOW
                else f"needs {d.confirm_by.value} confirmation" if d.verdict is Verdict.CONFIRM and d.confirm_by
                else "refused"
            )
        described = t.adapter_cls.describe(t.settings)
        targets.append({
            "name": t.name, "kind": t.kind, "access": t.access.value,
            "reaches": described.get("reaches", ""),
            "credentials": sorted(t.adapter_cls.secret_keys & set(t.settings.model_fields_set)),
            "tools": sorted(t.adapter_cls.tools),
            "effects": effects,
            "limits": t.limits.model_dump(),
            "compensation": described.get("compensation", "") if t.access is Access.READ_WRITE else "n/a (read-only)",
            "details": {k: v for k, v in described.items() if k not in {"reaches", "compensation"}},
        })
    return {
        "config": config.source,
        "state": str(config.state_dir),
        "confirm": {"ttl_s": config.confirm.ttl_s, "min_delay_s": config.confirm.min_delay_s},
        "policy_digest": config.policy_digest(),
        "targets": targets,
    }


def render_text(inv: dict[str, Any]) -> str:
    lines = [f"config ok: {inv['config']}", f"state: {inv['state']}", ""]
    for t in inv["targets"]:
        lines.append(f"target {t['name']} ({t['kind']}, {t['access']})")
        lines.append(f"  reaches:      {t['reaches']}")
        lines.append(f"  tools:        {', '.join(t['tools'])}")
        for effect, verdict in t["effects"].items():
            lines.append(f"  {effect + ':':<14}{verdict}")
        lim = t["limits"]
        lines.append(f"  limits:       rows_returned={lim['rows_returned']} rows_affected={lim['rows_affected']} "
                     f"writes_per_session={lim['writes_per_session']}")
        lines.append(f"  compensation: {t['compensation']}")
        for key, value in t.get("details", {}).items():
            lines.append(f"  {key + ':':<14}{value}")
        if "audit" in t:
            audit = t["audit"]
            if audit.get("can_write") and t["access"] == "read-only":
                lines.append("  WARNING:      its credentials can write although the target is read-only")
            for finding in audit.get("findings", []):
                lines.append(f"  audit:        {finding}")
        lines.append("")
    lines.append(f"confirmations expire after {inv['confirm']['ttl_s']}s and are accepted "
                 f"{inv['confirm']['min_delay_s']}s after the preview at the earliest")
    return "\n".join(lines)
