"""Org policy: ceilings a user config may tighten but never loosen.

`find_policy` locates the policy (`--policy`, `SAFE_MCP_POLICY`, `/etc/safe-mcp/policy.toml`) and, when a
public key is pinned, verifies its signature; `apply_policy` clamps a `Config` to it. A value the user
config asks for explicitly beyond a ceiling refuses to start; a default beyond it is clamped, and the
provenance of every effective value is kept for `safe-mcp check`.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import re
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from safe_mcp.adapter import Call, Classification
from safe_mcp.effects import Effect
from safe_mcp.errors import ConfigError
from safe_mcp.trust.config import Access, Config, ConfirmMode, Limits, Target

__all__ = [
    "SYSTEM_DIR",
    "OrgPolicy",
    "apply_policy",
    "check_listener",
    "find_policy",
    "load_policy",
    "org_forbid",
    "reaches",
]

SYSTEM_DIR = Path("/etc/safe-mcp")
"""The install's own config: `policy.toml` (used when nothing else names a policy), `policy.pub` (pinned key)."""

_ACCESS_RANK = {Access.READ_ONLY: 0, Access.READ_WRITE: 1}
_CONFIRM_RANK = {ConfirmMode.NONE: 0, ConfirmMode.AGENT: 1, ConfirmMode.HUMAN: 2, ConfirmMode.DENY: 3}
_DOMAIN = b"safe-mcp/org-policy/v1\x00"
_FIX = "lower it in the config, or ask the owners of the org policy to change it"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MinConfirm(_Strict):
    write: ConfirmMode | None = None
    destructive: ConfirmMode | None = None
    irreversible: ConfirmMode | None = None


class Forbid(_Strict):
    sql: list[str] = Field(default_factory=list, description="SQL functions refused anywhere in a statement")
    aws: list[str] = Field(default_factory=list, description='"service:Operation" globs, e.g. "ec2:TerminateInstances"')
    http: list[str] = Field(default_factory=list, description='"target:operation" globs for http targets, e.g. '
                                                              '"hosting:delete_backup*"; the target may also be named '
                                                              "by its host, the operation by its path template")


class Allow(_Strict):
    hosts: list[str] | None = Field(None, description="host globs a target may connect to (dsn, host, endpoint_url)")
    aws_accounts: list[str] | None = None
    regions: list[str] | None = None
    recipients: list[str] | None = Field(None, description="address globs every allow_recipients entry must fall in")


class Network(_Strict):
    bind_beyond_loopback: bool = Field(False, description="may HTTP/SSE listen on a non-loopback address")
    require_tokens: bool = Field(False, description='true: [server] auth = "none" is refused even on loopback')


class OrgPolicy(_Strict):
    source: str
    digest: str
    max_access: dict[str, Access] = Field(default_factory=dict, description='per kind, "*" for any kind')
    max_access_names: dict[str, Access] = Field(default_factory=dict, description="per target-name glob")
    min_confirm: MinConfirm = Field(default_factory=MinConfirm)
    max_limits: dict[str, int] = Field(default_factory=dict)
    forbid: Forbid = Field(default_factory=Forbid)
    allow: Allow = Field(default_factory=Allow)
    network: Network = Field(default_factory=Network)


class _File(_Strict):
    max_access: dict[str, Access | dict[str, Access]] = Field(default_factory=dict)
    min_confirm: MinConfirm = Field(default_factory=MinConfirm)
    max_limits: dict[str, int] = Field(default_factory=dict)
    forbid: Forbid = Field(default_factory=Forbid)
    allow: Allow = Field(default_factory=Allow)
    network: Network = Field(default_factory=Network)


def policy_file_schema() -> dict[str, Any]:
    """JSON schema of the org policy file (`max_access.names` is a table of target-name globs)."""
    return _File.model_json_schema()


def find_policy(explicit: str | None) -> tuple[Path | None, Path | None]:
    """The policy file to apply and the pinned public key, if any.

    Order: `--policy`, `SAFE_MCP_POLICY`, `SYSTEM_DIR/policy.toml`. The key: `SAFE_MCP_POLICY_PUBKEY` (a path),
    else `SYSTEM_DIR/policy.pub` when it exists.
    """
    chosen = explicit or os.environ.get("SAFE_MCP_POLICY") or None
    path = Path(chosen) if chosen else (SYSTEM_DIR / "policy.toml" if (SYSTEM_DIR / "policy.toml").exists() else None)
    key_env = os.environ.get("SAFE_MCP_POLICY_PUBKEY")
    key = Path(key_env) if key_env else (SYSTEM_DIR / "policy.pub" if (SYSTEM_DIR / "policy.pub").exists() else None)
    return path, key


def load_policy(path: Path, pubkey: Path | None = None) -> OrgPolicy:
    """Read, verify (when a key is pinned) and validate an org policy. Fails closed.

    Raises:
        ConfigError: unreadable, not TOML, unknown keys, empty, or (with a key) unsigned or wrongly signed.
    """
    src = str(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(src, "", f"cannot read the org policy: {exc.strerror or exc}",
                          "fix the path given by --policy or SAFE_MCP_POLICY, or ask your security team") from None
    if pubkey is not None:
        from safe_mcp.trust.signing import verify_file

        verify_file(path, data, pubkey)
    try:
        raw = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(src, "", f"the org policy is not valid TOML: {exc}", "fix the line named above") from None
    if not raw:
        raise ConfigError(src, "", "the org policy sets no ceilings", "an empty policy is refused: add at least one table")
    try:
        body = _File.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        raise ConfigError(src, key, err["msg"].lower(), "see docs/security-teams.md for the org policy keys") from None
    unknown = sorted(set(body.max_limits) - set(Limits.model_fields))
    if unknown:
        raise ConfigError(src, f"max_limits.{unknown[0]}", "not a limit",
                          f"use one of: {', '.join(sorted(Limits.model_fields))}")
    flat: dict[str, Access] = {}
    names: dict[str, Access] = {}
    for k, v in body.max_access.items():
        if isinstance(v, dict):
            if k != "names":
                raise ConfigError(src, f"max_access.{k}", "only max_access.names may be a table",
                                  'write kind = "read-only", or [max_access.names] "glob" = "read-only"')
            names.update(v)
        else:
            flat[k] = v
    digest = hashlib.sha256(_DOMAIN + data).hexdigest()
    return OrgPolicy(source=src, digest=digest, max_access=flat, max_access_names=names, min_confirm=body.min_confirm,
                     max_limits=body.max_limits, forbid=body.forbid, allow=body.allow, network=body.network)


# ---------------------------------------------------------------- clamping


def _raw_config(config: Config) -> dict[str, Any]:
    try:
        return tomllib.loads(Path(config.source).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return {}


def access_ceiling(policy: OrgPolicy, target: Target) -> tuple[Access, str] | None:
    """The strongest access `policy` allows `target`, and the policy key that says so (most specific wins)."""
    matching = [(a, f"max_access.names.{p!r}") for p, a in policy.max_access_names.items() if fnmatch.fnmatchcase(target.name, p)]
    if matching:
        return min(matching, key=lambda m: _ACCESS_RANK[m[0]])
    if target.kind in policy.max_access:
        return policy.max_access[target.kind], f"max_access.{target.kind}"
    if "*" in policy.max_access:
        return policy.max_access["*"], 'max_access."*"'
    return None


def apply_policy(config: Config, policy: OrgPolicy, raw: dict[str, Any] | None = None) -> Config:
    """`config` clamped by `policy`; `raw` is the config's TOML document (re-read from `config.source` if None).

    Raises:
        ConfigError: the config explicitly asks for more than a ceiling; names the key, the ceiling and the policy.
    """
    raw = _raw_config(config) if raw is None else raw
    src, pol = config.source, policy.source
    prov: dict[str, str] = {}

    def refuse(key: str, asked: Any, ceiling: Any, rule: str) -> ConfigError:
        return ConfigError(src, key, f"asks for {asked!r} but the org policy {pol} allows at most {ceiling!r} ({rule})", _FIX)

    # confirmations: the weakest allowed per effect
    raw_confirm = raw.get("confirm", {}) if isinstance(raw.get("confirm"), dict) else {}
    confirm_update: dict[str, ConfirmMode] = {}
    for effect in ("write", "destructive", "irreversible"):
        floor: ConfirmMode | None = getattr(policy.min_confirm, effect)
        mode: ConfirmMode = getattr(config.confirm, effect)
        explicit = effect in raw_confirm
        prov[f"confirm.{effect}"] = "config" if explicit else "default"
        if floor is not None and _CONFIRM_RANK[mode] < _CONFIRM_RANK[floor]:
            if explicit:
                raise ConfigError(src, f"confirm.{effect}", f"asks for {mode.value!r} but the org policy {pol} requires "
                                  f"at least {floor.value!r} (min_confirm.{effect})",
                                  f"set confirm.{effect} = {floor.value!r} or stricter, or ask the owners of the org policy")
            confirm_update[effect] = floor
            prov[f"confirm.{effect}"] = f"org policy {pol} (min_confirm.{effect}; default was {mode.value!r})"

    # limits: global, then every target's effective limits
    raw_limits = raw.get("limits", {}) if isinstance(raw.get("limits"), dict) else {}
    limits_update: dict[str, int] = {}
    for key in Limits.model_fields:
        prov[f"limits.{key}"] = "config" if key in raw_limits else "default"
        cap = policy.max_limits.get(key)
        value = getattr(config.limits, key)
        if cap is not None and isinstance(value, int) and value > cap:
            if key in raw_limits:
                raise refuse(f"limits.{key}", value, cap, f"max_limits.{key}")
            limits_update[key] = cap
            prov[f"limits.{key}"] = f"org policy {pol} (max_limits.{key}; default was {value})"

    raw_targets = raw.get("targets", {}) if isinstance(raw.get("targets"), dict) else {}
    targets: dict[str, Target] = {}
    for name, t in config.targets.items():
        body = raw_targets.get(name, {}) if isinstance(raw_targets.get(name), dict) else {}
        where = f"targets.{name}"
        prov[f"{where}.access"] = "config" if "access" in body else "default"
        ceiling = access_ceiling(policy, t)
        if ceiling is not None and _ACCESS_RANK[t.access] > _ACCESS_RANK[ceiling[0]]:
            raise refuse(f"{where}.access", t.access.value, ceiling[0].value, ceiling[1])
        t_limits = body.get("limits", {}) if isinstance(body.get("limits"), dict) else {}
        t_update: dict[str, int] = {}
        for key in Limits.model_fields:
            value = getattr(t.limits, key)
            origin = f"{where}.limits.{key}" if key in t_limits else f"limits.{key}" if key in raw_limits else ""
            prov[f"{where}.limits.{key}"] = "config" if origin else "default"
            cap = policy.max_limits.get(key)
            if cap is not None and isinstance(value, int) and value > cap:
                if origin:
                    raise refuse(origin, value, cap, f"max_limits.{key}")
                t_update[key] = cap
                prov[f"{where}.limits.{key}"] = f"org policy {pol} (max_limits.{key}; default was {value})"
        _check_reach(src, pol, policy, t)
        targets[name] = t.model_copy(update={"limits": t.limits.model_copy(update=t_update)}) if t_update else t

    if config.server.auth == "none" and policy.network.require_tokens:
        raise ConfigError(src, "server.auth", f'asks for "none" but the org policy {pol} requires tokens '
                          "(network.require_tokens)", 'remove server.auth, and use `safe-mcp token create`')
    org = {
        "source": pol, "digest": policy.digest, "forbid": policy.forbid.model_dump(),
        "network": policy.network.model_dump(), "provenance": prov,
        "ceilings": {
            "max_access": {k: v.value for k, v in policy.max_access.items()},
            "max_access_names": {k: v.value for k, v in policy.max_access_names.items()},
            "min_confirm": policy.min_confirm.model_dump(mode="json", exclude_none=True),
            "max_limits": dict(policy.max_limits),
            "allow": policy.allow.model_dump(exclude_none=True),
        },
    }
    return config.model_copy(update={
        "targets": targets,
        "limits": config.limits.model_copy(update=limits_update),
        "confirm": config.confirm.model_copy(update=confirm_update),
        "org_policy": org,
    })


# ---------------------------------------------------------------- where targets reach


def _dsn_hosts(dsn: str) -> list[str]:
    if "://" in dsn:
        netloc = urlsplit(dsn).netloc.rpartition("@")[2]
        hosts = []
        for part in netloc.split(","):
            host = part[1:].partition("]")[0] if part.startswith("[") else part.partition(":")[0]
            hosts.append(host or "localhost")
        return hosts
    found = re.findall(r"(?:^|\s)(?:host|hostaddr)\s*=\s*'?([^\s']+)", dsn)
    return [h for f in found for h in f.split(",")] or ["localhost"]


def reaches(settings: BaseModel) -> dict[str, list[str]]:
    """Hosts, accounts, regions and recipient patterns a target's settings point at (read by field name).

    Known fields: `dsn`, `host`, `endpoint_url` (hosts), `account`, `region`, `allow_recipients`.
    """
    out: dict[str, list[str]] = {"hosts": [], "aws_accounts": [], "regions": [], "recipients": []}
    def text(field: str) -> str | None:
        value = getattr(settings, field, None) if field in type(settings).model_fields else None
        return value if isinstance(value, str) else None

    if (dsn := text("dsn")) is not None:
        out["hosts"] += _dsn_hosts(dsn)
    if (host := text("host")) is not None:
        out["hosts"].append(host)
    for url_field in ("endpoint_url", "base_url"):
        if (endpoint := text(url_field)) is not None:
            out["hosts"].append(urlsplit(endpoint).hostname or "")
    if (account := text("account")) is not None:
        out["aws_accounts"].append(account)
    if (region := text("region")) is not None:
        out["regions"].append(region)
    recipients = getattr(settings, "allow_recipients", None)
    if isinstance(recipients, list | tuple):
        out["recipients"] += [str(r) for r in recipients]
    return out


def _check_reach(src: str, pol: str, policy: OrgPolicy, t: Target) -> None:
    fields = set(type(t.settings).model_fields)
    where = f"targets.{t.name}"
    got = reaches(t.settings)
    checks = [("hosts", "host", {"dsn", "host", "endpoint_url", "base_url"}), ("aws_accounts", "account", {"account"}),
              ("regions", "region", {"region"}), ("recipients", "allow_recipients", {"allow_recipients"})]
    for allow_key, cfg_key, field_names in checks:
        allowed: list[str] | None = getattr(policy.allow, allow_key)
        if allowed is None or not (fields & field_names):
            continue
        if not got[allow_key]:
            raise ConfigError(src, f"{where}.{cfg_key}", f"the org policy {pol} restricts allow.{allow_key} to "
                              f"{allowed} and this target does not say where it reaches",
                              f"set {cfg_key} explicitly to a value the policy allows")
        for value in got[allow_key]:
            if not any(fnmatch.fnmatchcase(value.lower(), a.lower()) for a in allowed):
                key = next((f"{where}.{f}" for f in sorted(field_names) if getattr(t.settings, f, None)), where)
                raise ConfigError(src, key, f"reaches {value!r} but the org policy {pol} allows only {allowed} "
                                  f"(allow.{allow_key})", "point the target elsewhere, or ask the owners of the org policy")


# ---------------------------------------------------------------- extra forbidden calls

_SQL_NOISE = re.compile(r"--[^\n]*|/\*.*?\*/|'(?:[^']|'')*'|\$([A-Za-z_]\w*)?\$.*?\$\1\$", re.S)
_SQL_CALL = re.compile(r'(U&)?("(?:[^"]|"")+"|[A-Za-z_][\w$]*)\s*\(')


def sql_functions(sql: str) -> set[str] | None:
    """Lower-case names of every function called in `sql` (schema dropped); None when names are escaped
    (`U&"..."`), which the caller must treat as forbidden. Comments and string literals are skipped."""
    text = _SQL_NOISE.sub(" ", sql)
    names: set[str] = set()
    for m in _SQL_CALL.finditer(text):
        if m.group(1):
            return None
        word = m.group(2)
        names.add(word[1:-1].replace('""', '"').lower() if word.startswith('"') else word.lower())
    return names


def _norm_op(op: str) -> str:
    return re.sub(r"[_\-]", "", op).lower()


def org_forbid(config: Config, call: Call, classification: Classification) -> Classification:
    """`classification`, or FORBIDDEN when the org policy's `[forbid]` lists name what the call does."""
    forbid = config.org_policy.get("forbid") or {}
    sql_list = [s.lower().rpartition(".")[2] for s in forbid.get("sql", [])]
    aws_list = forbid.get("aws", [])
    why = ""
    if sql_list and isinstance(call.args.get("sql"), str):
        called = sql_functions(call.args["sql"])
        if called is None:
            why = "escaped identifiers (U&) are refused while the org policy forbids SQL functions"
        else:
            hit = sorted(f for f in called if any(fnmatch.fnmatchcase(f, p) for p in sql_list))
            if hit:
                why = f"the org policy forbids the SQL function {hit[0]}"
    if aws_list and call.tool == "aws_call":
        name = f"{str(call.args.get('service', '')).lower()}:{_norm_op(str(call.args.get('operation', '')))}"
        for pattern in aws_list:
            svc, _, op = pattern.partition(":")
            if fnmatch.fnmatchcase(name, f"{svc.lower()}:{_norm_op(op) or '*'}"):
                why = f"the org policy forbids {pattern}"
                break
    if forbid.get("http") and call.tool == "http_call":
        why = _http_forbidden(call, classification, forbid["http"])
    if not why:
        return classification
    return classification.model_copy(update={
        "effect": Effect.FORBIDDEN, "reason": f"{why} ({config.org_policy.get('source', 'org policy')})"})


def _http_forbidden(call: Call, classification: Classification, patterns: list[str]) -> str:
    """Matched on the target's name or host, and the operation's name or path template, so that renaming
    a target or an operation in the user config does not slip past the org policy."""
    d = classification.detail
    who = {call.target.lower(), str(d.get("host", "")).lower()} - {""}
    what = {str(call.args.get("operation", "")).lower(), str(d.get("operation", "")).lower(),
            str(d.get("path_template", "")).lower(), str(d.get("path", "")).lower()} - {""}
    for pattern in patterns:
        left, _, right = pattern.lower().partition(":")
        if any(fnmatch.fnmatchcase(w, left) for w in who) and any(fnmatch.fnmatchcase(x, right or "*") for x in what):
            return f"the org policy forbids {pattern}"
    return ""


def check_listener(config: Config, host: str, loopback: bool) -> list[str]:
    """Refuse a listener the config or org policy does not allow; return warnings to log.

    Raises:
        ConfigError: non-loopback without tokens, allowed_hosts or allowed_origins, or forbidden by the policy.
    """
    src = config.source
    network = config.org_policy.get("network") or {}
    if not loopback:
        if config.org_policy and not network.get("bind_beyond_loopback"):
            raise ConfigError(config.org_policy["source"], "network.bind_beyond_loopback",
                              f"the org policy does not allow listening on {host}", "use --host 127.0.0.1")
        if config.server.auth == "none":
            raise ConfigError(src, "server.auth", f"refusing to listen on {host} without authentication",
                              'use tokens (safe-mcp token create) or [server] auth = "oidc"')
        if not config.server.allowed_hosts or not config.server.allowed_origins:
            raise ConfigError(src, "server.allowed_hosts", f"refusing to listen beyond loopback on {host} without explicit "
                              "server.allowed_hosts and server.allowed_origins (DNS rebinding)",
                              'set [server] allowed_hosts = ["name:port"] and allowed_origins = ["https://..."]')
        return []
    if config.server.auth == "none":
        return ['HTTP/SSE authentication is OFF ([server] auth = "none"): any local process can call this '
                "server; use tokens (`safe-mcp token create`) unless this is a throwaway test"]
    return []


def effective_config(config_path: str | os.PathLike[str], policy_arg: str | None = None) -> Config:
    """The user config at `config_path` clamped by the org policy in force (see `find_policy`).

    Raises:
        ConfigError: the config is invalid, the policy is unreadable/unsigned/badly signed, a key is pinned but
            no policy is found, or the config asks for more than a ceiling.
    """
    from safe_mcp.trust.config import load_config

    config = load_config(config_path)
    path, key = find_policy(policy_arg)
    if path is None:
        if key is not None:
            raise ConfigError(str(key), "", "a policy signing key is pinned but no org policy was found",
                              f"pass --policy FILE, set SAFE_MCP_POLICY, or install {SYSTEM_DIR / 'policy.toml'}")
        return config
    return apply_policy(config, load_policy(path, key))
