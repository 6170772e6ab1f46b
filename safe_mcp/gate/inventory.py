"""The blast-radius inventory printed by `safe-mcp check`: what every target can touch."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

from safe_mcp.effects import Effect
from safe_mcp.gate.policy import Verdict, decide
from safe_mcp.trust.config import Access, Config, Target
from safe_mcp.trust.exposure import Principal, exposure, socket_reach
from safe_mcp.trust.orgpolicy import reaches

__all__ = ["inventory", "inventory_schema", "render_md", "render_text"]


def inventory(config: Config, client: Principal | None = None, uds: Path | None = None) -> dict[str, Any]:
    """A plain-data description of every target; no connection is made. With `client` (the OS user the
    agent runs as), also what that user can reach of the secrets, config, policy and state (`exposure`), and
    whether it can connect to the gateway's Unix socket `uds` (default `[server] uds`)."""
    targets: list[dict[str, Any]] = []
    for t in config.targets.values():
        effects = {}
        for e in Effect:
            d = decide(e, t, config.confirm)
            effects[e.value] = (
                "allowed" if d.verdict is Verdict.ALLOW
                else f"needs {d.confirm_by.value} confirmation" if d.verdict is Verdict.CONFIRM and d.confirm_by
                else "refused"
            )
        described = t.spec.describe(t.settings)
        refs = t.spec.secret_refs(t.settings)
        targets.append({
            "name": t.name, "kind": t.kind, "access": t.access.value,
            "reaches": described.get("reaches", ""),
            "credentials": sorted(refs),
            "credential_refs": refs,
            "reaches_detail": reaches(t.settings),
            "forbidden": _forbidden(config, t),
            "tools": sorted(t.spec.tools),
            "effects": effects,
            "limits": t.limits.model_dump(),
            "compensation": described.get("compensation", "") if t.access is Access.READ_WRITE else "n/a (read-only)",
            "details": {k: v for k, v in described.items() if k not in {"reaches", "compensation"}},
        })
    doc: dict[str, Any] = {
        "config": config.source,
        "state": str(config.state_dir),
        "confirm": {"ttl_s": config.confirm.ttl_s, "min_delay_s": config.confirm.min_delay_s},
        "policy_digest": config.policy_digest(),
        "org_policy": ({k: config.org_policy[k] for k in ("source", "digest", "ceilings", "network")}
                       if config.org_policy else None),
        "provenance": config.org_policy.get("provenance", {}),
        "targets": targets,
    }
    if client is not None:
        uds = uds if uds is not None else config.uds_path
        findings = exposure(config, client, uds)
        for entry in targets:
            entry["exposure"] = [f.doc() for f in findings if f.target == entry["name"]]
        doc["exposure"] = {"client_user": client.name, "gateway_user": _user(),
                           "exposed": sum(f.exposed for f in findings),
                           "findings": [f.doc() for f in findings if f.target is None]}
        if uds is not None:
            doc["exposure"]["socket"] = socket_reach(client, uds, config.server.uds_group).doc()
    return doc


def _user() -> str:
    import os
    import pwd

    return pwd.getpwuid(os.getuid()).pw_name


def _forbidden(config: Config, t: Target) -> list[str]:
    out = [f"built-in: what the {t.kind} adapter classifies as forbidden (never runs, whatever the config)"]
    forbid = config.org_policy.get("forbid") or {}
    if {"sql_query", "sql_execute"} & t.spec.tools:
        out += [f"org policy: SQL function {f}" for f in forbid.get("sql", [])]
    if "aws_call" in t.spec.tools:
        out += [f"org policy: {op}" for op in forbid.get("aws", [])]
    if t.access is Access.READ_ONLY:
        out.append("every write (read-only target)")
    return out


def render_text(inv: dict[str, Any], width: int | None = None) -> str:
    """One block per target: aligned `label  value` lines; on a terminal (`width`), long values wrap
    between words under their column."""
    lines = [f"config ok: {inv['config']}", f"state: {inv['state']}", ""]
    for t in inv["targets"]:
        pairs: list[tuple[str, str]] = [("reaches", t["reaches"]), ("tools", ", ".join(t["tools"]))]
        pairs += list(t["effects"].items())
        lim = t["limits"]
        pairs.append(("limits", f"rows_returned={lim['rows_returned']} rows_affected={lim['rows_affected']} "
                                f"writes_per_session={lim['writes_per_session']}"))
        pairs.append(("compensation", t["compensation"]))
        pairs += [(k, str(v)) for k, v in t.get("details", {}).items()]
        audit = t.get("audit", {})
        if audit.get("can_write") and t["access"] == "read-only":
            pairs.append(("WARNING", "its credentials can write although the target is read-only"))
        pairs += [("audit", f) for f in audit.get("findings", [])]
        pairs += [("PROBLEM", p) for p in t.get("problems", []) if p not in audit.get("findings", [])]
        pairs += _exposure_pairs(t.get("exposure", []))
        lines.append(f"target {t['name']} ({t['kind']}, {t['access']})")
        lines += _pairs(pairs, width)
        lines.append("")
    exp = inv.get("exposure")
    if exp:
        lines.append(f"what the agent's OS user {exp['client_user']} can reach (the gateway runs as {exp['gateway_user']})")
        lines += _pairs(_exposure_pairs(exp["findings"]) or [("ok", "nothing")], width)
        sock = exp.get("socket")
        if sock:
            said = f"{'can' if sock['can_connect'] else 'CANNOT'} connect to {sock['path']}: {sock['why']}"
            lines += _pairs([("socket", said + (f". Fix: {sock['fix']}" if sock["fix"] else ""))], width)
        lines.append(f"  {exp['exposed']} exposed" if exp["exposed"] else "  nothing of the gateway's is within its reach")
        lines.append("")
    lines.append(f"confirmations expire after {inv['confirm']['ttl_s']}s and are accepted "
                 f"{inv['confirm']['min_delay_s']}s after the preview at the earliest")
    return "\n".join(lines)


def _exposure_pairs(findings: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """One line per exposed finding, with the reason and the fix; one line listing what is out of reach."""
    out = [("EXPOSED", f"{f['subject']}: the agent's user can {f['access']} it; {f['why']}. Fix: {f['fix']}")
           for f in findings if f["exposed"]]
    safe = [f"{f['subject']} ({f['access']})" for f in findings if not f["exposed"]]
    if safe:
        out.append(("out of reach", "; ".join(safe)))
    return out


def _pairs(pairs: list[tuple[str, str]], width: int | None) -> list[str]:
    label = max(len(k) for k, _ in pairs) + 2  # "key:" then at least one space
    out = []
    for key, value in pairs:
        head = f"  {key + ':':<{label}}"
        room = (width - len(head)) if width else 0
        chunks = textwrap.wrap(value, room, break_long_words=False, break_on_hyphens=False) if room > 20 else [value]
        out.append((head + (chunks[0] if chunks else "")).rstrip())
        out += [" " * len(head) + c for c in chunks[1:]]
    return out


def render_md(inv: dict[str, Any]) -> str:
    """The inventory as Markdown, for a security review."""
    lines = [f"# safe-mcp inventory: `{inv['config']}`", "", f"- state: `{inv['state']}`",
             f"- policy digest: `{inv['policy_digest']}`"]
    org = inv.get("org_policy")
    lines.append(f"- org policy: `{org['source']}` (digest `{org['digest']}`)" if org else "- org policy: none")
    lines.append("")
    for t in inv["targets"]:
        lines += [f"## {t['name']} ({t['kind']}, {t['access']})", "", "| | |", "|---|---|",
                  f"| reaches | {t['reaches']} |"]
        for key, values in t["reaches_detail"].items():
            if values:
                lines.append(f"| {key} | {', '.join(values)} |")
        refs = ", ".join(f"{k} = `{v}`" for k, v in t["credential_refs"].items()) or "none"
        lines += [f"| credentials | {refs} |", f"| tools | {', '.join(t['tools'])} |"]
        lines += [f"| {effect} | {verdict} |" for effect, verdict in t["effects"].items()]
        lines.append(f"| limits | {', '.join(f'{k}={v}' for k, v in t['limits'].items())} |")
        lines.append(f"| compensation | {t['compensation']} |")
        lines.append(f"| forbidden | {'; '.join(t['forbidden'])} |")
        lines.append("")
    if inv.get("provenance"):
        lines += ["## Where each value came from", "", "| key | source |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in sorted(inv["provenance"].items())]
    return "\n".join(lines)


def inventory_schema() -> dict[str, Any]:
    """The JSON schema of `safe-mcp check --format json` (published as config/inventory.schema.json)."""
    strs = {"type": "array", "items": {"type": "string"}}
    finding = {
        "type": "object", "additionalProperties": False,
        "required": ["subject", "access", "exposed", "why", "fix", "target", "path"],
        "properties": {
            "subject": {"type": "string"}, "access": {"enum": ["read", "write"]},
            "exposed": {"type": "boolean", "description": "the agent's user can read or write it"},
            "why": {"type": "string"}, "fix": {"type": "string", "description": "empty when not exposed"},
            "target": {"type": ["string", "null"]}, "path": {"type": ["string", "null"]},
        },
    }
    target = {
        "type": "object", "additionalProperties": False,
        "required": ["name", "kind", "access", "reaches", "credentials", "credential_refs", "reaches_detail",
                     "forbidden", "tools", "effects", "limits", "compensation", "details"],
        "properties": {
            "name": {"type": "string"}, "kind": {"type": "string"},
            "access": {"enum": [a.value for a in Access]},
            "reaches": {"type": "string", "description": "the system and host/account the target reaches"},
            "credentials": {**strs, "description": "settings keys that hold secret references"},
            "credential_refs": {"type": "object", "additionalProperties": {"type": "string"},
                                "description": "the references themselves (keyring:NAME, env:VAR); never values"},
            "reaches_detail": {"type": "object", "additionalProperties": False,
                               "required": ["hosts", "aws_accounts", "regions", "recipients"],
                               "properties": {k: strs for k in ("hosts", "aws_accounts", "regions", "recipients")}},
            "forbidden": strs,
            "tools": strs,
            "effects": {"type": "object", "required": [e.value for e in Effect],
                        "additionalProperties": {"type": "string"},
                        "description": "per effect class: allowed, needs <who> confirmation, or refused"},
            "limits": {"type": "object", "additionalProperties": {"type": "integer"}},
            "compensation": {"type": "string"},
            "details": {"type": "object", "additionalProperties": {"type": "string"}},
            "audit": {"type": "object", "properties": {"can_write": {"type": ["boolean", "null"]}, "findings": strs}},
            "exposure": {"type": "array", "items": finding,
                         "description": "what the agent's OS user can reach of this target's secrets and files"},
            "problems": {**strs, "description": "why the target cannot be used as configured (missing file, "
                                                "no connection); `safe-mcp check` exits 1 when any is listed"},
        },
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "safe-mcp inventory (safe-mcp check --format json)",
        "type": "object", "additionalProperties": False,
        "required": ["config", "state", "confirm", "policy_digest", "org_policy", "provenance", "targets"],
        "properties": {
            "config": {"type": "string"}, "state": {"type": "string"},
            "confirm": {"type": "object", "properties": {"ttl_s": {"type": "integer"}, "min_delay_s": {"type": "number"}}},
            "policy_digest": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
            "org_policy": {"oneOf": [{"type": "null"}, {
                "type": "object", "required": ["source", "digest", "ceilings", "network"],
                "properties": {"source": {"type": "string"}, "digest": {"type": "string"},
                               "ceilings": {"type": "object"}, "network": {"type": "object"}}}]},
            "provenance": {"type": "object", "additionalProperties": {"type": "string"},
                           "description": "effective key -> config, default, or the org policy rule that set it"},
            "targets": {"type": "array", "items": target},
            "exposure": {
                "type": "object", "additionalProperties": False,
                "required": ["client_user", "gateway_user", "exposed", "findings"],
                "description": "what the MCP client's OS user (check --client-user) can reach of the config, policy "
                               "and state; per-target findings are under each target's exposure",
                "properties": {"client_user": {"type": "string"}, "gateway_user": {"type": "string"},
                               "exposed": {"type": "integer", "description": "findings exposed, targets included"},
                               "findings": {"type": "array", "items": finding},
                               "socket": {
                                   "type": "object", "additionalProperties": False,
                                   "required": ["path", "can_connect", "why", "fix"],
                                   "description": "the gateway's Unix socket (serve --uds, check --uds): whether the "
                                                  "client's user can connect (expected of a client; tokens are still "
                                                  "required)",
                                   "properties": {"path": {"type": "string"}, "can_connect": {"type": "boolean"},
                                                  "why": {"type": "string"}, "fix": {"type": "string"}}}}},
        },
    }
