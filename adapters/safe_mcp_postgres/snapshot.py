"""The built-in `snapshot` hook for PostgreSQL: copy the table aside, into safe-mcp's trash schema, first.

The copy is a table in the trash schema (which no agent statement may touch), made with the table's
columns, defaults, constraints and indexes (`LIKE ... INCLUDING ALL`). The artifact file (0600, under the
state directory) says where it is and how many rows it holds. At undo it puts back what is missing and
never overwrites newer data.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import psycopg

from safe_mcp.errors import AdapterError
from safe_mcp.hooks import Artifact, Hook, HookContext, HookFailed, safe_table
from safe_mcp_postgres.adapter import PostgresAdapter
from safe_mcp_postgres.engine import qi
from safe_mcp_postgres.tables import trash_ready

__all__ = ["PostgresSnapshot"]


class PostgresSnapshot(Hook):
    name = "snapshot"
    kinds = frozenset({"postgres"})

    def preview(self, ctx: HookContext) -> str:
        return f"snapshot would copy table {ctx.table} into the trash schema before {ctx.statement}"

    def capture(self, ctx: HookContext) -> Artifact:
        adapter, table = _adapter(ctx), _table(ctx)
        trash = adapter.s.trash_schema
        copy = "snap_" + hashlib.sha256(ctx.artifact.name.encode()).hexdigest()[:12] + "_" + table.split(".")[-1][:40]
        try:
            with adapter.engine.connection() as conn:
                conn.read_only = False
                schema, name = _resolve(conn, table)
                trash_ready(conn, trash)
                source, kept = f"{qi(schema)}.{qi(name)}", f"{qi(trash)}.{qi(copy)}"
                conn.execute(f"CREATE TABLE {kept} (LIKE {source} INCLUDING ALL)")
                rows = conn.execute(f"INSERT INTO {kept} OVERRIDING SYSTEM VALUE SELECT * FROM {source}").rowcount
                conn.commit()
        except psycopg.Error as exc:
            raise HookFailed(f"the snapshot of {table} could not be made: {adapter.engine.scrub(str(exc)).strip()}",
                             f"check the role may create tables in {trash}") from None
        except AdapterError as exc:
            raise HookFailed(f"the snapshot of {table} could not be made: {exc}") from None
        record = {"schema": schema, "table": name, "trash": trash, "copy": copy, "rows": rows}
        try:
            ctx.artifact.touch(mode=0o600, exist_ok=False)
            ctx.artifact.write_text(json.dumps(record), encoding="utf-8")
        except OSError as exc:
            raise HookFailed(f"the snapshot record could not be written to {ctx.artifact}: {exc.strerror or exc}",
                             "check the state directory's artifacts folder is writable") from None
        return Artifact(hook=self.name, path=str(ctx.artifact), statement=ctx.statement, table=table, detail=record)

    def verify(self, ctx: HookContext, artifact: Artifact) -> None:
        adapter, record = _adapter(ctx), _record(artifact)
        try:
            with adapter.engine.connection() as conn:
                found = conn.execute("SELECT to_regclass($1) IS NOT NULL",
                                     [f"{qi(record['trash'])}.{qi(record['copy'])}"]).fetchone()
                rows = conn.execute(f"SELECT count(*) FROM {qi(record['trash'])}.{qi(record['copy'])}").fetchone() \
                    if found and found[0] else None
        except (psycopg.Error, AdapterError) as exc:
            raise HookFailed(f"the snapshot {record['trash']}.{record['copy']} cannot be read: {exc}") from None
        if rows is None or rows[0] != record["rows"]:
            raise HookFailed(f"the snapshot {record['trash']}.{record['copy']} is gone or does not hold the "
                             f"{record['rows']} rows copied")

    def compensate(self, ctx: HookContext, artifact: Artifact) -> str:
        adapter, record = _adapter(ctx), _record(artifact)
        target, kept = f"{qi(record['schema'])}.{qi(record['table'])}", f"{qi(record['trash'])}.{qi(record['copy'])}"
        shown = f"{record['schema']}.{record['table']}"
        try:
            with adapter.engine.connection() as conn:
                conn.read_only = False
                exists = conn.execute("SELECT to_regclass($1) IS NOT NULL", [target]).fetchone()
                if not (exists and exists[0]):
                    conn.execute(f"CREATE TABLE {target} (LIKE {kept} INCLUDING ALL)")
                    how = "recreated"
                else:
                    count = conn.execute(f"SELECT count(*) FROM {target}").fetchone()
                    if count and count[0]:
                        same = conn.execute(f"SELECT NOT EXISTS (SELECT * FROM {target} EXCEPT ALL SELECT * FROM {kept})"
                                            f" AND NOT EXISTS (SELECT * FROM {kept} EXCEPT ALL SELECT * FROM {target})"
                                            ).fetchone()
                        if same and same[0]:
                            return f"table {shown} is already as the snapshot holds it"
                        raise HookFailed(f"table {shown} holds rows that differ from the snapshot; restoring would "
                                         "overwrite newer data", f"compare it with {record['trash']}.{record['copy']} "
                                                                 "and restore by hand")
                    how = "refilled"
                n = conn.execute(f"INSERT INTO {target} OVERRIDING SYSTEM VALUE SELECT * FROM {kept}").rowcount
                conn.commit()
        except psycopg.Error as exc:
            raise HookFailed(f"could not restore {shown} from the snapshot: {adapter.engine.scrub(str(exc)).strip()}",
                             f"restore by hand from {record['trash']}.{record['copy']}") from None
        except AdapterError as exc:
            if isinstance(exc, HookFailed):
                raise
            raise HookFailed(f"could not restore {shown} from the snapshot: {exc}") from None
        return f"table {shown} {how} from the snapshot ({n} rows)"


def _resolve(conn: psycopg.Connection[Any], table: str) -> tuple[str, str]:
    """(schema, name) of `table` as the search path finds it (unquoted names are folded, as in SQL).

    Raises:
        HookFailed: there is no such table.
    """
    parts = table.split(".")
    found = conn.execute("SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                         "WHERE c.oid = to_regclass($1)", [".".join(qi(p) for p in parts)]).fetchone()
    if found is None:
        raise HookFailed(f"table {table} does not exist")
    return str(found[0]), str(found[1])


def _record(artifact: Artifact) -> dict[str, Any]:
    try:
        record = json.loads(Path(artifact.path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise HookFailed(f"the snapshot record {artifact.path} cannot be read: {exc}") from None
    if not isinstance(record, dict) or not {"schema", "table", "trash", "copy", "rows"} <= set(record):
        raise HookFailed(f"the snapshot record {artifact.path} is not one this hook wrote")
    return record


def _table(ctx: HookContext) -> str:
    if ctx.table is None or safe_table(ctx.table) is None:
        raise HookFailed(f"{ctx.statement} names no single table to snapshot")
    return ctx.table


def _adapter(ctx: HookContext) -> PostgresAdapter:
    if not isinstance(ctx.adapter, PostgresAdapter):
        raise HookFailed("the postgres snapshot hook runs on postgres targets only")
    return ctx.adapter
