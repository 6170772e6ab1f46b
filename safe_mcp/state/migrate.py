"""Copy a state store to another database (SQLite to a PostgreSQL server, say) with its chain intact."""

from __future__ import annotations

from safe_mcp.errors import StateError
from safe_mcp.state.store import StateStore

__all__ = ["TABLES", "migrate"]

TABLES = ("receipts", "ledger_head", "pending", "compensations", "idempotency", "intents", "counters", "breakers",
          "approvers", "approvals", "approval_requests", "approval_meta", "tokens")
"""Every table of the state, in an order that copies cleanly."""


def migrate(source: StateStore, dest: StateStore, tables_ddl: str = "") -> dict[str, int]:
    """Copy every row of `source` into `dest`, whose ledger must be empty; verify the chain on `dest`.
    `tables_ddl` creates the tables other modules keep in the state (approvals, tokens) on `dest` first.

    Returns the rows copied per table.

    Raises:
        StateError: `dest` already holds receipts, a copy failed, or the copied chain does not verify.
    """
    source.flush()
    if dest.query("SELECT count(*) FROM receipts")[0][0]:
        raise StateError(f"the destination {dest.path} already holds receipts; migrate into an empty one")
    with dest.transaction() as tx:
        for stmt in dest.ddl(tables_ddl):
            tx.execute(stmt)
    copied: dict[str, int] = {}
    with dest.transaction() as tx:
        tx.execute("DELETE FROM ledger_head")
        for table in TABLES:
            try:
                rows = source.query(f"SELECT * FROM {table}")
                names = [r[1] for r in source.query(f"PRAGMA table_info({table})")] if source.db.dialect == "sqlite" \
                    else [r[0] for r in source.query("SELECT column_name FROM information_schema.columns WHERE "
                                                     "table_schema = current_schema() AND table_name = ? "
                                                     "ORDER BY ordinal_position", (table,))]
            except StateError:
                continue  # a table the source never created (no approvers enrolled, say)
            if not rows:
                copied[table] = 0
                continue
            cols = ", ".join(names)
            marks = ", ".join("?" for _ in names)
            tx.executemany(f"INSERT INTO {table} ({cols}) VALUES ({marks})", rows)
            copied[table] = len(rows)
    report = dest.verify()
    if not report.ok:
        raise StateError(f"the copied ledger does not verify at {report.first_bad}: {report.problem}")
    return copied
