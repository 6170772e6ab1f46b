"""What the config needs of a PostgreSQL target, without psycopg or pglast (they cost ~100 ms of start-up):
its settings, tools and secret keys. The adapter itself (`safe_mcp_postgres.adapter`) is imported on first use."""

from __future__ import annotations

import re
from typing import ClassVar

from pydantic import Field, field_validator

from safe_mcp.adapter import AdapterSettings, AdapterSpec
from safe_mcp.hooks import HookSpec, HooksSetting, check_hooks

__all__ = ["PostgresSettings", "PostgresSpec", "plain_dsn", "where"]


class PostgresSettings(AdapterSettings):
    dsn: str = Field(description="postgresql://user@host:port/db (no password: use `password`)")
    password: str | None = Field(None, description='a secret reference: "keyring:NAME" or "env:VAR"')
    statement_timeout_ms: int = Field(30_000, gt=0, description="a statement running longer is cancelled")
    lock_timeout_ms: int = Field(5_000, gt=0, description="waiting longer for a lock cancels the statement")
    idle_in_transaction_timeout_ms: int = Field(60_000, gt=0, description="an idle open transaction is ended")
    connect_timeout_s: int = Field(3, gt=0, description="give up connecting (and report the database as down) after "
                                   "this many seconds; also used by `safe-mcp check`")
    pool_min_size: int = Field(1, ge=0, description="connections kept open once the pool is in use")
    pool_max_size: int = Field(4, ge=1, description="connections at most")
    trash_schema: str = Field("_safe_mcp_trash", min_length=1, max_length=63,
                              description="where DROP TABLE and TRUNCATE keep the old data for undo")
    journal_keep_days: int = Field(30, ge=1, description="journal entries (with the before-images undo needs) "
                                                          "are pruned after this many days")
    allow_writable_role: bool = Field(False, description="let serve listen on HTTP/SSE for a read-only target "
                                                          "whose role could write (not recommended)")
    hooks: HooksSetting = ()

    @field_validator("hooks")
    @classmethod
    def _hooks_installed(cls, value: tuple[HookSpec, ...]) -> tuple[HookSpec, ...]:
        return check_hooks("postgres", value)

    @field_validator("dsn")
    @classmethod
    def _no_password(cls, value: str) -> str:
        keys: set[str] | None = None if (plain := plain_dsn(value)) is None else set(plain)
        if keys is None:  # not one of the plain forms: libpq itself judges it
            from psycopg import ProgrammingError
            from psycopg.conninfo import conninfo_to_dict

            try:
                keys = set(conninfo_to_dict(value))
            except ProgrammingError:
                raise ValueError("not a valid PostgreSQL connection string") from None
        if "password" in keys:
            raise ValueError('the dsn contains a password: remove it and set password = "keyring:NAME" or "env:VAR"')
        return value


# Connection keywords every libpq since 13 knows (tests check them against the installed libpq). A dsn that uses
# another one, quoting, escapes, several hosts or percent-encoding is parsed by libpq instead (psycopg imported).
_KNOWN = frozenset({
    "application_name", "channel_binding", "client_encoding", "connect_timeout", "dbname", "fallback_application_name",
    "gssencmode", "host", "hostaddr", "keepalives", "keepalives_count", "keepalives_idle", "keepalives_interval",
    "krbsrvname", "options", "passfile", "password", "port", "requirepeer", "service", "ssl_max_protocol_version",
    "ssl_min_protocol_version", "sslcert", "sslcompression", "sslcrl", "sslkey", "sslmode", "sslrootcert",
    "target_session_attrs", "tcp_user_timeout", "user",
})
_SPACE = "[ \t\n\r\f\v]"
_PAIR = rf"([a-z_]+){_SPACE}*={_SPACE}*([^\s'\\=]+)"
_PAIRS = re.compile(rf"{_SPACE}*(?:{_PAIR}(?:{_SPACE}+{_PAIR})*)?{_SPACE}*", re.ASCII)
_ONE_PAIR = re.compile(_PAIR, re.ASCII)
_WORD = "[A-Za-z0-9._-]"
_URI = re.compile(
    rf"postgres(?:ql)?://(?:(?P<user>{_WORD}+)@)?(?P<host>{_WORD}+)?(?::(?P<port>[0-9]+))?(?:/(?P<dbname>{_WORD}*))?"
    rf"(?:\?(?P<query>[a-z_]+={_WORD}*(?:&[a-z_]+={_WORD}*)*)?)?", re.ASCII)


def plain_dsn(dsn: str) -> dict[str, str] | None:
    """What libpq makes of a plain `dsn` (as psycopg's `conninfo_to_dict`), or None when it is not plain and
    only libpq can say. Plain: `key=value` pairs of known keywords with unquoted values, or a URI with one
    host, no password in it, no percent-encoding and a query of known keywords (tests compare with libpq)."""
    if dsn.startswith(("postgresql://", "postgres://")):
        m = _URI.fullmatch(dsn)
        if m is None:
            return None
        out = {k: v for k in ("user", "dbname", "host", "port") if (v := m[k])}
        if m["query"]:
            out.update(pair.split("=", 1) for pair in m["query"].split("&"))  # type: ignore[misc]
    else:
        if _PAIRS.fullmatch(dsn) is None:
            return None
        out = {m[1]: m[2] for m in _ONE_PAIR.finditer(dsn)}
    return out if set(out) <= _KNOWN else None


def where(dsn: str) -> str:
    """user@host:port/db of a DSN, for messages (never the password)."""
    d = plain_dsn(dsn)
    if d is None:
        from safe_mcp_postgres.engine import where as libpq_where

        return libpq_where(dsn)
    return f"{d.get('user', '?')}@{d.get('host', 'localhost')}:{d.get('port', 5432)}/{d.get('dbname', '?')}"


class PostgresSpec(AdapterSpec):
    kind = "postgres"
    settings_model = PostgresSettings
    tools = frozenset({"sql_query", "sql_execute", "sql_schema"})
    secret_keys = frozenset({"password"})
    requires: ClassVar[tuple[str, ...]] = ("psycopg", "psycopg_pool", "pglast")

    @classmethod
    def describe(cls, settings: AdapterSettings) -> dict[str, str]:
        assert isinstance(settings, PostgresSettings)
        return {"reaches": f"postgresql {where(settings.dsn)}",
                "compensation": "before-images of inserted/updated/deleted rows of plain tables with a key and no "
                                "triggers, rules, cascades, children or partitions, journaled with each write in "
                                f"schema _safe_mcp (kept {settings.journal_keep_days} days); DROP TABLE and TRUNCATE "
                                f"keep the old data in schema {settings.trash_schema}",
                "statement_timeout_ms": str(settings.statement_timeout_ms)}
