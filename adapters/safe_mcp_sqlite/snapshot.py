"""The built-in `snapshot` hook for SQLite: copy the table aside into a file of its own before the statement.

The artifact is a small SQLite database holding the table (its CREATE statement and its rows), written
0600 under the state directory. At undo it puts back what is missing and never overwrites newer data.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

from safe_mcp.hooks import Artifact, Hook, HookContext, HookFailed, safe_table
from safe_mcp_sqlite.adapter import SqliteAdapter
from safe_mcp_sqlite.capture import q

__all__ = ["SqliteSnapshot"]


class SqliteSnapshot(Hook):
    name = "snapshot"
    kinds = frozenset({"sqlite"})

    def preview(self, ctx: HookContext) -> str:
        return f"snapshot would copy table {ctx.table} aside before {ctx.statement}"

    def capture(self, ctx: HookContext) -> Artifact:
        table = _table(ctx)
        source = _source(ctx)
        try:
            ctx.artifact.touch(mode=0o600, exist_ok=False)
        except OSError as exc:
            raise HookFailed(f"the snapshot of {table} could not be made at {ctx.artifact}: {exc.strerror or exc}",
                             "check the state directory's artifacts folder is writable and has space") from None
        try:
            rows = _copy(ctx.artifact, source, table)
        except (sqlite3.Error, HookFailed) as exc:
            ctx.artifact.unlink(missing_ok=True)
            if isinstance(exc, HookFailed):
                raise
            raise HookFailed(f"the snapshot of {table} could not be written to {ctx.artifact}: {exc}",
                             "check the state directory's artifacts folder is writable and has space") from None
        return Artifact(hook=self.name, path=str(ctx.artifact), statement=ctx.statement, table=table,
                        detail={"rows": rows})

    def verify(self, ctx: HookContext, artifact: Artifact) -> None:
        table = _table(ctx)
        try:
            with closing(sqlite3.connect(f"{Path(artifact.path).resolve().as_uri()}?mode=ro", uri=True)) as snap:
                rows = snap.execute(f"SELECT count(*) FROM main.{q(table)}").fetchone()[0]
        except sqlite3.Error as exc:
            raise HookFailed(f"the snapshot {artifact.path} cannot be read: {exc}") from None
        if rows != artifact.detail.get("rows"):
            raise HookFailed(f"the snapshot {artifact.path} holds {rows} rows of {table}, "
                             f"not the {artifact.detail.get('rows')} copied")

    def compensate(self, ctx: HookContext, artifact: Artifact) -> str:
        table = _table(ctx)
        snapshot = Path(artifact.path).resolve()
        try:
            with closing(sqlite3.connect(_source(ctx).as_uri(), uri=True, isolation_level=None, timeout=5)) as conn:
                conn.execute("ATTACH DATABASE ? AS snap", (f"{snapshot.as_uri()}?mode=ro",))
                conn.execute("BEGIN IMMEDIATE")
                try:
                    said = _restore(conn, table, artifact.path)
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise HookFailed(f"could not restore {table} from {artifact.path}: {exc}",
                             f"restore by hand from the snapshot file {artifact.path}") from None
        return said


def _copy(artifact: Path, source: Path, table: str) -> int:
    """Copy `table` of `source` into the empty database `artifact`, in one read of the source."""
    with closing(sqlite3.connect(artifact.resolve().as_uri(), uri=True, isolation_level=None)) as snap:
        snap.execute("ATTACH DATABASE ? AS src", (f"{source.as_uri()}?mode=ro",))
        row = snap.execute("SELECT sql FROM src.sqlite_master WHERE type = 'table' AND name = ?", (table,)).fetchone()
        if row is None:
            raise HookFailed(f"table {table} does not exist in {source.name}")
        snap.execute("BEGIN")
        snap.execute(row[0])  # the table's own CREATE TABLE, made in the snapshot file
        snap.execute(f"INSERT INTO main.{q(table)} SELECT * FROM src.{q(table)}")
        rows = int(snap.execute(f"SELECT count(*) FROM main.{q(table)}").fetchone()[0])
        snap.execute("COMMIT")
        return rows


def _restore(conn: sqlite3.Connection, table: str, path: str) -> str:
    """Recreate a dropped table (its columns and rows; not its indexes or triggers), refill an emptied
    one, or find it already as captured; else refuse."""
    exists = conn.execute("SELECT 1 FROM main.sqlite_master WHERE type = 'table' AND name = ?", (table,)).fetchone()
    if exists is None:
        create = conn.execute("SELECT sql FROM snap.sqlite_master WHERE type = 'table' AND name = ?", (table,)).fetchone()
        if create is None:
            raise HookFailed(f"the snapshot {path} holds no table {table}")
        conn.execute(create[0])  # the CREATE TABLE as the snapshot file holds it
    elif conn.execute(f"SELECT count(*) FROM main.{q(table)}").fetchone()[0]:
        differs = conn.execute(f"SELECT EXISTS (SELECT * FROM main.{q(table)} EXCEPT SELECT * FROM snap.{q(table)}) "
                               f"OR EXISTS (SELECT * FROM snap.{q(table)} EXCEPT SELECT * FROM main.{q(table)})"
                               ).fetchone()[0]
        if differs:
            raise HookFailed(f"table {table} holds rows that differ from the snapshot; restoring would "
                             "overwrite newer data", f"compare it with the snapshot file {path} and restore by hand")
        return f"table {table} is already as the snapshot holds it"
    n = conn.execute(f"INSERT INTO main.{q(table)} SELECT * FROM snap.{q(table)}").rowcount
    return f"table {table} {'recreated' if exists is None else 'refilled'} from the snapshot ({n} rows)"


def _table(ctx: HookContext) -> str:
    if safe_table(ctx.table) is None or ctx.table is None:
        raise HookFailed(f"{ctx.statement} names no single table to snapshot")
    return ctx.table


def _source(ctx: HookContext) -> Path:
    if not isinstance(ctx.adapter, SqliteAdapter):
        raise HookFailed("the sqlite snapshot hook runs on sqlite targets only")
    return ctx.adapter.path.resolve()
