"""`safe-mcp state migrate --to URL`: move a ledger to a PostgreSQL server that several instances share."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from safe_mcp.trust.config import Config

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("state", help="the state store: migrate it to PostgreSQL")
    ssub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    m = ssub.add_parser("migrate", parents=[common], help="copy this config's state, chain intact, to another store",
                        description="Copy every receipt (with its chain), pending action, undo record, idempotency "
                                    "key, budget, breaker, approver and token of this config's state into an empty "
                                    "PostgreSQL state, then verify the chain there. Then set [state] url to it.")
    m.add_argument("--to", required=True, metavar="URL", help="postgresql://USER@HOST:PORT/DB (no password in it)")
    m.add_argument("--password", metavar="REF", help="the password as a reference: keyring:NAME or env:VAR")
    m.add_argument("--schema", default="safe_mcp", help="the schema that will hold the state (default: safe_mcp)")


def run(args: argparse.Namespace, config: Config) -> int:
    """Exit 0 when copied and verified; errors (StateError, ConfigError) reach the CLI's handler."""
    from safe_mcp.errors import ConfigError
    from safe_mcp.gate.approvals import APPROVAL_TABLES
    from safe_mcp.gate.runtime import open_state
    from safe_mcp.state.db import PostgresDb
    from safe_mcp.state.migrate import migrate
    from safe_mcp.state.store import StateStore
    from safe_mcp.trust.auth import TOKEN_TABLES
    from safe_mcp.trust.config import SECRET_REF, StateSettings
    from safe_mcp.trust.secrets import resolve_ref

    try:
        StateSettings(url=args.to, pg_schema=args.schema)
    except ValueError:
        raise ConfigError("--to", "", f"{args.to!r} is not a postgresql:// URL (or --schema is not a lower-case name)",
                          "pass e.g. --to postgresql://safe_mcp@db.internal:5432/safe_mcp") from None
    if "@" in args.to and ":" in args.to.split("@", 1)[0].split("//", 1)[-1]:
        raise ConfigError("--to", "", "the URL contains a password", "pass it as --password keyring:NAME or env:VAR")
    password = None
    if args.password:
        if not SECRET_REF.match(args.password):
            raise ConfigError("--password", "", "secrets are references", "pass keyring:NAME or env:VAR")
        password = resolve_ref(args.password, source="--password", key="password")
    source = open_state(config)
    dest = StateStore(db=PostgresDb(args.to, password, args.schema))
    try:
        print(f"copying the state of {config.source} ({source.path}) to {dest.path} schema {args.schema}", flush=True)
        copied = migrate(source, dest, APPROVAL_TABLES + TOKEN_TABLES)
    finally:
        source.close()
        dest.close()
    for table, n in copied.items():
        if n:
            print(f"  {table:<18} {n:>8} rows")
    print(f"ok: {copied.get('receipts', 0)} receipts copied, chain verified on {args.to}")
    print(f'now set, under [state]: url = "{args.to}"' + (f', pg_schema = "{args.schema}"' if args.schema != "safe_mcp" else "")
          + (f', password = "{args.password}"' if args.password else ""))
    return 0
