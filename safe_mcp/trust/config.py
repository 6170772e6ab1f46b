"""The TOML config, parsed into frozen models. Every error names file, key and fix."""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
import tomllib
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from safe_mcp.adapter import Adapter, AdapterSettings, AdapterSpec
from safe_mcp.effects import Effect
from safe_mcp.errors import ConfigError

__all__ = [
    "Access",
    "ApprovalSettings",
    "Config",
    "ConfirmMode",
    "ConfirmRules",
    "Limits",
    "ServerSettings",
    "StateSettings",
    "Target",
    "TelemetrySettings",
    "default_config_path",
    "load_config",
]

SECRET_REF = re.compile(r"^(keyring|env):[A-Za-z0-9_.\-/]+$")
_URL_PASSWORD = re.compile(r"://[^/@\s:]+:[^/@\s]+@")


class Access(StrEnum):
    READ_ONLY = "read-only"
    READ_WRITE = "read-write"


class ConfirmMode(StrEnum):
    """Who confirms an effect: nobody, the agent (two-step), a human out of band, or nobody ever."""

    NONE = "none"
    AGENT = "agent"
    HUMAN = "human"
    DENY = "deny"


class _Strict(BaseModel):
    # strict: TOML has real integers, booleans and floats, so `rows_returned = "500"` or `auth = 1` is a
    # typo to report, never a value to coerce. Enum fields opt out (their strings are the values).
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class Limits(_Strict):
    rows_returned: int = Field(500, ge=1, description="rows a read returns at most; more sets truncated")
    rows_affected: int = Field(100, ge=0, description="a write touching more rows is rolled back")
    bytes_returned: int = Field(1_000_000, ge=1024, description="bytes of row data a read returns at most; more sets truncated")
    writes_per_session: int = Field(50, ge=0, description="writes one server session may execute")
    # Sliding-window budgets, per session and target: a normal session never meets them, a runaway
    # loop meets them within seconds.
    writes_per_minute: int = Field(30, ge=0, description="writes per session and target in any 60 s")
    writes_per_hour: int = Field(300, ge=0, description="writes per session and target in any hour")
    destructive_per_hour: int = Field(10, ge=0, description="destructive actions per session and target in any hour")
    rows_affected_per_hour: int = Field(5000, ge=0, description="rows changed per session and target in any hour")


class LimitsOverride(_Strict):
    rows_returned: int | None = Field(None, ge=1)
    rows_affected: int | None = Field(None, ge=0)
    bytes_returned: int | None = Field(None, ge=1024)
    writes_per_session: int | None = Field(None, ge=0)
    writes_per_minute: int | None = Field(None, ge=0)
    writes_per_hour: int | None = Field(None, ge=0)
    destructive_per_hour: int | None = Field(None, ge=0)
    rows_affected_per_hour: int | None = Field(None, ge=0)


class BreakerRules(_Strict):
    """A burst of trouble in one session trips the breaker for that session and target: its writes
    are refused until a human runs `safe-mcp breaker reset`. Reads still work."""

    window_s: int = Field(60, ge=1, description="the window the counts below are taken over")
    refusals: int = Field(10, ge=1, description="refused calls in the window that trip it")
    failures: int = Field(5, ge=1, description="failed or rolled-back writes in the window that trip it")
    near_limit: int = Field(5, ge=1, description="writes using over 80% of rows_affected in the window that trip it")


class ConfirmRules(_Strict):
    write: ConfirmMode = Field(ConfirmMode.NONE, strict=False)
    destructive: ConfirmMode = Field(ConfirmMode.AGENT, strict=False)
    irreversible: ConfirmMode = Field(ConfirmMode.HUMAN, strict=False)
    ttl_s: int = Field(300, ge=1, description="a pending action expires after this many seconds")
    min_delay_s: float = Field(2, ge=0, description="a confirm earlier than this after the preview is refused")
    approvals_required: int | dict[str, int] = Field(
        1, description="distinct human approvers a `human` action needs: a number, or per effect "
                       "(e.g. {irreversible = 2}); a target may set its own")

    def for_effect(self, effect: Effect) -> ConfirmMode:
        if effect is Effect.READ:
            return ConfirmMode.NONE
        if effect is Effect.FORBIDDEN:
            return ConfirmMode.DENY
        mode: ConfirmMode = getattr(self, effect.value)
        return mode


class ApprovalSettings(_Strict):
    """Where humans approve `human` actions: the web page and the webhook told of each new one."""

    host: str = Field("127.0.0.1", description="bind address of the approval page (loopback unless you mean it)")
    port: int | None = Field(None, ge=1, le=65535, description="serve the approval page on this port (stdio too)")
    allowed_hosts: list[str] = Field(default_factory=list, description="extra Host values the page accepts")
    notify_url: str | None = Field(None, pattern=r"^https?://[^\s]+$",
                                   description="webhook (Slack incoming-webhook compatible) told of each new approval; "
                                               "http:// or https:// only")
    notify_retries: int = Field(3, ge=0, le=10, description="retries of a failed webhook post")
    oidc_client_id: str | None = Field(None, min_length=1, max_length=200, description=(
        "approvers sign in to the approval page with the team's OpenID provider, as this client "
        "(authorization code + PKCE); the redirect URI to register is http://HOST:PORT/approvals/callback"))
    oidc_client_secret: str | None = Field(None, description=(
        "that client's secret, if it has one: keyring:NAME or env:VAR (public clients leave it out)"))
    oidc_issuer: str = Field("", description='the provider\'s issuer URL; default: [server] issuer when auth = "oidc"')
    oidc_scopes: list[str] = Field(default_factory=lambda: ["openid", "profile", "email"], description=(
        'scopes asked at sign-in ("openid" is always sent); add the one that puts [server] roles_claim in the ID token'))
    oidc_session_s: int = Field(900, ge=60, le=43200, description="how long an approver's sign-in on the page lasts")
    totp: bool | None = Field(None, description=(
        "ask for the approver's TOTP code too; default: only when no provider sign-in is configured. With "
        "oidc_client_id, true means the page also asks for the code of approver oidc:SUB "
        "(enrolled with `safe-mcp approver add oidc:SUB`)"))

    def provider_issuer(self, server: ServerSettings) -> str:
        """The issuer approvers sign in with ("" when provider sign-in is off)."""
        if not self.oidc_client_id:
            return ""
        return self.oidc_issuer or (server.issuer if server.auth == "oidc" else "")

    def totp_required(self) -> bool:
        """Whether a decision needs a TOTP code: `totp`, else only when no provider sign-in is configured."""
        return self.totp if self.totp is not None else not self.oidc_client_id


class StateSettings(_Strict):
    path: str = Field(".safe-mcp", description="receipts, pending actions and trash; relative to the config")
    url: str | None = Field(None, pattern=r"^postgres(ql)?://[^\s]+$", description=(
        "keep the state on this PostgreSQL server instead (postgresql://USER@HOST:PORT/DB), so several "
        "instances share one ledger; the password goes in `password`, never in the URL"))
    password: str | None = Field(None, description="the state server's password: keyring:NAME or env:VAR")
    pg_schema: str = Field("safe_mcp", pattern=r"^[a-z_][a-z0-9_]{0,62}$",
                           description="the PostgreSQL schema that holds the state tables")


class ShipSettings(_Strict):
    """`[receipts.ship]`: batches of receipts, each with a signed chain head, written to an S3 bucket with
    Object Lock under COMPLIANCE retention. Credentials: the standard AWS chain, or `profile`."""

    bucket: str = Field(..., pattern=r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$", description="an S3 bucket with Object Lock enabled")
    prefix: str = Field("", pattern=r"^[^\s]*$", description='where the batches go in the bucket, e.g. "team-a/"')
    region: str | None = Field(None, description="the bucket's region (default: the AWS chain's)")
    endpoint_url: str | None = Field(None, pattern=r"^https?://[^\s]+$", description="an S3-compatible endpoint")
    profile: str | None = Field(None, description="an AWS profile (default: the standard credential chain)")
    retention_days: int = Field(..., ge=1, le=36500, description="COMPLIANCE retention of each batch, in days")
    interval_s: float = Field(5, ge=0.2, le=3600, description="the background shipper runs this often")
    batch_max: int = Field(1000, ge=1, le=100_000, description="receipts in one batch at most")
    fail_writes_when_unshipped_s: int | None = Field(None, ge=1, description=(
        "refuse writes while the oldest unshipped write receipt is older than this (default: writes go on)"))


class ReceiptSettings(_Strict):
    ship: ShipSettings | None = Field(None, description="ship receipts off the box (absent: they stay local)")


class ServerSettings(_Strict):
    """How HTTP/SSE listeners authenticate callers and which Host/Origin headers they accept."""

    auth: Literal["token", "oidc", "none"] = Field(
        "token", description='token: every HTTP/SSE request needs a token from `safe-mcp token create`; '
                             'oidc: an OAuth 2.1 access token (JWT) from `issuer` for `audience`; '
                             'none: no authentication, allowed only on a loopback-only listener')
    allowed_hosts: list[str] = Field(default_factory=list, description='Host headers accepted, e.g. "mcp.internal:8765" '
                                                                       'or "mcp.internal:*"; required beyond loopback')
    allowed_origins: list[str] = Field(default_factory=list, description='Origin headers accepted, e.g. '
                                                                         '"https://ide.internal"; required beyond loopback')
    uds: str = Field("", description='serve --transport http on this Unix socket instead of host:port (relative to '
                                     'the config\'s folder); mode 0600, or 0660 with uds_group; tokens still required')
    uds_group: str = Field("", description="the group whose members may connect to the Unix socket (mode 0660); "
                                           "empty: only the gateway's own user (mode 0600)")
    max_request_bytes: int = Field(4 * 1024 * 1024, ge=1024, description="a request larger than this is refused "
                                                                         "before it is parsed (stdio and HTTP)")
    issuer: str = Field("", description='auth = "oidc": the OpenID provider\'s issuer URL, exactly as its tokens '
                                        'carry it in "iss" (its discovery document and JWKS are fetched from it)')
    audience: str = Field("", description='auth = "oidc": this server\'s resource identifier (RFC 8707), usually its '
                                          'public URL ending in /mcp; tokens must carry it in "aud"')
    required_scopes: list[str] = Field(default_factory=list, description='auth = "oidc": scopes every access token '
                                                                         'must carry (published to clients)')
    roles_claim: str = Field("groups", description='auth = "oidc": the claim holding groups or roles; a dotted path '
                                                   'reaches into objects, e.g. "realm_access.roles"')
    roles: dict[Literal["agent", "approver", "admin"], list[str]] = Field(
        default_factory=dict, description='auth = "oidc": which values of roles_claim grant which role, e.g. '
                                          '{ agent = ["eng"], admin = ["platform"] }; empty: every valid token is an agent')

    @model_validator(mode="after")
    def _oidc_needs_issuer_and_audience(self) -> ServerSettings:
        if self.auth == "oidc":
            for key in ("issuer", "audience"):
                url = getattr(self, key)
                loopback = re.match(r"^http://(127\.0\.0\.1|localhost|\[::1\])(:\d+)?(/|$)", url)
                if not (url.startswith("https://") or loopback):
                    raise ValueError(f'auth = "oidc" needs {key} = "https://..." (plain http only on loopback): '
                                     f"set server.{key}")
        return self


class TelemetrySettings(_Strict):
    """OpenTelemetry over OTLP/HTTP: a span per tool call, and each call's receipt as a log record."""

    otlp_endpoint: str = Field(pattern=r"^https?://[^\s/]+(/[^\s]*)?$", description=(
        "the OTLP/HTTP receiver (a collector), e.g. http://127.0.0.1:4318; /v1/traces and /v1/logs are added"))
    service_name: str = Field("safe-mcp", min_length=1, description="service.name on every span and log record")
    export_receipts: bool = Field(True, description="send each call's receipt (already scrubbed) as a log record")
    headers: dict[str, str] = Field(default_factory=dict, description=(
        'headers sent to the receiver, e.g. {authorization = "env:OTLP_AUTH"}; a value that is a secret '
        "(authorization, or a name with key, token or secret) must be a keyring:NAME or env:VAR reference"))

    @field_validator("headers")
    @classmethod
    def _secret_headers_are_refs(cls, headers: dict[str, str]) -> dict[str, str]:
        for name, value in headers.items():
            secret = name.lower() == "authorization" or any(w in name.lower() for w in ("key", "token", "secret"))
            if secret and not SECRET_REF.match(value):
                raise ValueError(f'header {name} is a secret written in the config: use a reference, '
                                 f'{name} = "env:VAR" or "keyring:NAME"')
        return headers


class _TargetCommon(_Strict):
    kind: str
    access: Access = Field(Access.READ_ONLY, strict=False)
    limits: LimitsOverride = Field(default_factory=LimitsOverride)
    trust_client_elicitation: bool = Field(
        False, description="let an MCP client's elicitation answer count as one human approval on this target")
    approvals_required: int | None = Field(None, ge=1, description="distinct approvers a human action here needs")


class Target(BaseModel):
    """One system the agent may touch, with its effective limits."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    name: str
    kind: str
    access: Access
    limits: Limits
    settings: AdapterSettings
    spec: type[AdapterSpec] = Field(exclude=True)
    """What is known of the adapter without importing it: settings model, tools, secret keys, `describe`."""
    trust_client_elicitation: bool = False
    approvals_required: int | None = None

    @property
    def adapter_cls(self) -> type[Adapter]:
        """The adapter class, imported on first use (its driver costs start-up time).

        Raises:
            ConfigError: it cannot be imported, or does not match its spec.
        """
        from safe_mcp.registry import load_adapter

        return load_adapter(self.kind)


class Config(BaseModel):
    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    source: str
    base_dir: str
    targets: dict[str, Target]
    limits: Limits
    confirm: ConfirmRules
    state: StateSettings
    approvals: ApprovalSettings = Field(default_factory=ApprovalSettings)
    server: ServerSettings = Field(default_factory=ServerSettings)
    breaker: BreakerRules = Field(default_factory=BreakerRules)
    receipts: ReceiptSettings = Field(default_factory=ReceiptSettings)
    telemetry: TelemetrySettings | None = None
    org_policy: dict[str, Any] = Field(default_factory=dict)
    """Set by `safe_mcp.trust.orgpolicy.apply_policy`: source, digest, forbid lists and provenance of the org policy."""

    @property
    def uds_path(self) -> Path | None:
        """`[server] uds` resolved against the config's folder; None when not set."""
        return Path(self.base_dir, self.server.uds) if self.server.uds else None

    @property
    def state_dir(self) -> Path:
        return Path(self.base_dir, self.state.path)

    def policy_digest(self) -> str:
        """A digest of everything that decides what is allowed (no secret values: only references)."""
        doc = {
            "limits": self.limits.model_dump(mode="json"),
            "confirm": self.confirm.model_dump(mode="json"),
            "breaker": self.breaker.model_dump(mode="json"),
            "targets": {
                n: {
                    "kind": t.kind,
                    "access": t.access.value,
                    "limits": t.limits.model_dump(mode="json"),
                    "settings": t.settings.model_dump(mode="json"),
                    **({"approvals": [t.trust_client_elicitation, t.approvals_required]}
                       if t.trust_client_elicitation or t.approvals_required else {}),
                }
                for n, t in sorted(self.targets.items())
            },
        }
        if self.org_policy.get("digest"):
            doc["org_policy"] = self.org_policy["digest"]
        blob = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(b"safe-mcp/policy/v1\x00" + blob).hexdigest()


class _Root(_Strict):
    targets: dict[str, dict[str, Any]] = Field(default_factory=dict)
    limits: Limits = Field(default_factory=Limits)
    confirm: ConfirmRules = Field(default_factory=ConfirmRules)
    state: StateSettings = Field(default_factory=StateSettings)
    approvals: ApprovalSettings = Field(default_factory=ApprovalSettings)
    server: ServerSettings = Field(default_factory=ServerSettings)
    breaker: BreakerRules = Field(default_factory=BreakerRules)
    receipts: ReceiptSettings = Field(default_factory=ReceiptSettings)
    telemetry: TelemetrySettings | None = None


def default_config_path() -> Path:
    """`SAFE_MCP_CONFIG`, else `./safe-mcp.toml`."""
    return Path(os.environ.get("SAFE_MCP_CONFIG") or "safe-mcp.toml")


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate a config file, loading only the adapter kinds it names.

    Raises:
        ConfigError: the file is missing, not TOML, or any key is invalid.
    """
    p = Path(path)
    src = str(p)
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            src, "", "no such config file", "pass --config FILE, set SAFE_MCP_CONFIG, or copy config/demo.toml"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(src, "", f"cannot read the file: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(src, "", f"not valid TOML: {exc}", "check the line named above") from None
    return parse_config(raw, source=src, base_dir=str(p.resolve().parent))


def parse_config(raw: dict[str, Any], *, source: str, base_dir: str) -> Config:
    """Validate an already-parsed TOML document. See `load_config`."""
    from safe_mcp.registry import load_spec

    try:
        root = _Root.model_validate(raw)
    except ValidationError as exc:
        raise _config_error(source, exc, prefix=()) from None
    if not root.targets:
        raise ConfigError(source, "targets", "no targets are configured", 'add a [targets.NAME] table with kind = "..."')
    targets: dict[str, Target] = {}
    for name, body in root.targets.items():
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_\-]{0,62}", name):
            raise ConfigError(source, f"targets.{name}", "a target name must be a letter then letters, digits, _ or -")
        common_keys = {"kind", "access", "limits", "trust_client_elicitation", "approvals_required"}
        common = {k: v for k, v in body.items() if k in common_keys}
        rest = {k: v for k, v in body.items() if k not in common_keys}
        try:
            tc = _TargetCommon.model_validate(common)
        except ValidationError as exc:
            raise _config_error(source, exc, prefix=("targets", name)) from None
        spec = load_spec(tc.kind, source=source, key=f"targets.{name}.kind")
        _check_secret_refs(source, name, rest, spec)
        try:
            # Strict like the core keys ("500" is not 500); through JSON so TOML lists still fill tuple fields.
            settings = spec.settings_model.model_validate_json(json.dumps(rest, default=str), strict=True)
        except ValidationError as exc:
            raise _config_error(source, exc, prefix=("targets", name), model=spec.settings_model) from None
        merged = root.limits.model_dump()
        merged.update({k: v for k, v in tc.limits.model_dump().items() if v is not None})
        targets[name] = Target(
            name=name,
            kind=tc.kind,
            access=tc.access,
            limits=Limits(**merged),
            settings=settings,
            spec=spec,
            trust_client_elicitation=tc.trust_client_elicitation,
            approvals_required=tc.approvals_required,
        )
    _check_state(source, root.state)
    _check_approvals(source, root.approvals, root.server)
    return Config(
        source=source,
        base_dir=base_dir,
        targets=targets,
        limits=root.limits,
        confirm=root.confirm,
        state=root.state,
        approvals=root.approvals,
        server=root.server,
        breaker=root.breaker,
        receipts=root.receipts,
        telemetry=root.telemetry,
    )


def _check_state(source: str, state: StateSettings) -> None:
    if state.url and _URL_PASSWORD.search(state.url):
        raise ConfigError(source, "state.url", "this URL contains a password",
                          'remove it from the URL and set password = "keyring:NAME" or "env:VAR" under [state]')
    if state.password is not None and not SECRET_REF.match(state.password):
        raise ConfigError(source, "state.password", "secrets may not be written in the config",
                          'use a reference: password = "keyring:NAME" or "env:VAR"')


def _check_approvals(source: str, approvals: ApprovalSettings, server: ServerSettings) -> None:
    """Provider sign-in for approvers needs an issuer, a role map that names approvers, and a secret by reference."""
    if approvals.oidc_client_id is None:
        for key in ("oidc_client_secret", "oidc_issuer"):
            if getattr(approvals, key):
                raise ConfigError(source, f"approvals.{key}", "set without approvals.oidc_client_id",
                                  "set oidc_client_id too, or remove this key")
        if approvals.totp is False:
            raise ConfigError(source, "approvals.totp", "false needs provider sign-in: without it the TOTP code is "
                              "the only proof of who approves", "set approvals.oidc_client_id, or remove totp")
        return
    issuer = approvals.provider_issuer(server)
    loopback = re.match(r"^http://(127\.0\.0\.1|localhost|\[::1\])(:\d+)?(/|$)", issuer)
    if not (issuer.startswith("https://") or loopback):
        raise ConfigError(source, "approvals.oidc_issuer", "provider sign-in needs the provider's issuer URL "
                          "(https://..., plain http only on loopback)",
                          'set approvals.oidc_issuer, or [server] issuer with auth = "oidc"')
    if not (server.roles.get("approver") or server.roles.get("admin")):
        raise ConfigError(source, "server.roles", "provider sign-in for approvers needs a role map naming who may "
                          "approve", 'set [server] roles = { approver = ["GROUP"], ... } (and roles_claim)')
    if approvals.oidc_client_secret is not None and not SECRET_REF.match(approvals.oidc_client_secret):
        raise ConfigError(source, "approvals.oidc_client_secret", "secrets may not be written in the config",
                          'use a reference: oidc_client_secret = "keyring:NAME" or "env:VAR"')


def _check_secret_refs(source: str, name: str, body: dict[str, Any], spec: type[AdapterSpec]) -> None:
    for key, value in body.items():
        where = f"targets.{name}.{key}"
        if key in spec.secret_keys:
            if not isinstance(value, str) or not SECRET_REF.match(value):
                raise ConfigError(
                    source,
                    where,
                    "secrets may not be written in the config",
                    f'use a reference: {key} = "keyring:NAME" (store it with `safe-mcp secrets set NAME`) '
                    f'or {key} = "env:VAR"',
                )
        elif isinstance(value, str) and _URL_PASSWORD.search(value):
            raise ConfigError(
                source,
                where,
                "this URL contains a password",
                'remove it from the URL and set password = "keyring:NAME" or "env:VAR"',
            )


_EXPECTED = {"int_type": "an integer", "int_parsing": "an integer", "int_from_float": "an integer",
             "bool_type": "true or false", "bool_parsing": "true or false", "float_type": "a number",
             "float_parsing": "a number", "string_type": "a string in quotes", "list_type": "a list [...]",
             "tuple_type": "a list [...]", "dict_type": "a table {...}", "model_type": "a table {...}",
             "model_attributes_type": "a table {...}", "literal_error": "", "enum": ""}
_UNION_TAGS = re.compile(r"^(int|str|float|bool|none|dict\[.*\]|list\[.*\]|tuple\[.*\]|literal\[.*\])$")
_SECRET_WORDS = ("password", "secret", "token", "key")


def _config_error(
    source: str, exc: ValidationError, prefix: tuple[str, ...], model: type[BaseModel] | None = None
) -> ConfigError:
    """The first validation error as file, key, problem and fix; never echoes a value that may be a secret."""
    err = exc.errors()[0]
    kind = err["type"]
    # Union errors add the member type to the location (confirm.approvals_required.int): not a key.
    loc = prefix + tuple(str(p) for p in err["loc"] if kind == "extra_forbidden" or not _UNION_TAGS.match(str(p)))
    key = ".".join(loc)
    name = loc[-1] if loc else ""
    if kind == "extra_forbidden":
        allowed = _keys_at(prefix, tuple(str(p) for p in err["loc"][:-1]), model)
        close = difflib.get_close_matches(name, allowed, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}? " if close else ""
        fix = (f"{hint}remove it or check its spelling (valid keys here: {', '.join(allowed)})" if allowed
               else "remove it or check its spelling against config/safe-mcp.schema.json")
        return ConfigError(source, key, "unknown key", fix)
    if kind == "missing":
        return ConfigError(source, key, "required key is missing", f"add {name} = ...")
    if kind == "enum":
        expected = err.get("ctx", {}).get("expected", "")
        return ConfigError(source, key, f"invalid value {err.get('input')!r}", f"use one of {expected}")
    if kind == "value_error":
        text = str(err.get("ctx", {}).get("error", err["msg"]))
        value = err.get("input")
        if isinstance(value, str) and (_URL_PASSWORD.search(value) or re.search(r"(^|[?&\s])password=", value)):
            # The same words as a password in the URL's user part (_check_secret_refs).
            return ConfigError(source, key, "this URL contains a password",
                               'remove it from the URL and set password = "keyring:NAME" or "env:VAR"')
        problem, _, fix = text.partition(": ") if ": " in text and _looks_like_fix(text.partition(": ")[2]) else (
            text, "", "")
        return ConfigError(source, key, problem, fix)
    if _EXPECTED.get(kind):
        value = err.get("input")
        shown = "" if any(w in name.lower() for w in _SECRET_WORDS) or len(repr(value)) > 40 else f" {value!r}"
        got = {str: "a string", bool: "a boolean", int: "an integer", float: "a number", list: "a list",
               dict: "a table"}.get(type(value), type(value).__name__)
        fix = f"write it as {_EXPECTED[kind]}"
        bare = value.strip().lower() if isinstance(value, str) else ""
        number = kind in {"int_type", "float_type"} and re.fullmatch(r"-?[0-9_]+(\.[0-9_]+)?", bare)
        if number or (kind == "bool_type" and bare in {"true", "false"}):
            fix += f", without quotes: {name} = {bare}"
        return ConfigError(source, key, f"expected {_EXPECTED[kind]}, got {got}{shown}", fix)
    bounds = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}
    if kind in bounds:
        limit = next(iter(err.get("ctx", {}).values()), "")
        return ConfigError(source, key, f"{err.get('input')!r} is out of range", f"use a value {bounds[kind]} {limit}")
    if kind == "string_pattern_mismatch":
        return ConfigError(source, key, "the value does not have the expected form",
                           f"use a value matching {err.get('ctx', {}).get('pattern', '')}")
    if kind == "literal_error":
        return ConfigError(source, key, f"invalid value {err.get('input')!r}",
                           f"use one of {err.get('ctx', {}).get('expected', '')}")
    return ConfigError(source, key, err["msg"].lower(), "see config/safe-mcp.schema.json for what this key accepts")


def _looks_like_fix(text: str) -> bool:
    return text.split(" ", 1)[0] in {"remove", "use", "set", "add", "give", "write", "pick", "put", "choose"}


def _keys_at(prefix: tuple[str, ...], path: tuple[str, ...], model: type[BaseModel] | None) -> list[str]:
    """The valid keys of the table at `prefix` + `path`: a target's own keys include the common ones."""
    base: type[BaseModel] = model or (_TargetCommon if prefix[:1] == ("targets",) else _Root)
    extra = set(_TargetCommon.model_fields) if model is not None and not path else set()
    for part in path:
        field = base.model_fields.get(part)
        ann = field.annotation if field is not None else None
        ann = next((a for a in getattr(ann, "__args__", ()) if isinstance(a, type) and issubclass(a, BaseModel)), ann)
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return []
        base, extra = ann, set()
    names = {f.alias or n for n, f in base.model_fields.items()} | extra
    return sorted(names)
