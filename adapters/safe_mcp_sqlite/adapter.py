"""SQLite: reads on a read-only connection, writes with before-images, soft drop, undo."""

from __future__ import annotations

import hashlib
import sqlite3
import threading
import time
from collections.abc import Mapping
from contextlib import closing
from pathlib import Path
from typing import Any

from pydantic import Field

from safe_mcp.adapter import Adapter, AdapterSettings, Budget, Call, Classification, Outcome, Preview
from safe_mcp.effects import Effect
from safe_mcp.errors import AdapterError, Escalated, TooManyRows
from safe_mcp.receipts import new_id
from safe_mcp_sqlite.capture import Capture, count_changes, encode, q, restore, sample
from safe_mcp_sqlite.classify import (
    ACTIONS,
    ARG_PRAGMAS,
    FORBIDDEN_FUNCTIONS,
    INTERNAL_PREFIX,
    READ_PRAGMAS,
    SCHEMA_TABLES,
    classify_actions,
    collect,
)

_SAMPLE = 5


class SqliteSettings(AdapterSettings):
    path: str = Field(description="the database file, relative to the config file's folder")
    foreign_keys: bool = Field(True, description="enforce foreign keys (and their cascades) on writes")
    statement_timeout_s: float = Field(30, gt=0, description="a statement running longer is interrupted")


def _read_authorizer(code: int, a1: str | None, a2: str | None, db: str | None, trig: str | None) -> int:
    """The engine-side guard for reads: anything but reading is denied, whatever the text said."""
    name = ACTIONS[code] if 0 <= code < len(ACTIONS) else ""
    if name in {"SELECT", "READ", "RECURSIVE"}:
        return sqlite3.SQLITE_OK
    if name == "FUNCTION" and (a2 or "").lower() not in FORBIDDEN_FUNCTIONS:
        return sqlite3.SQLITE_OK
    if name == "PRAGMA" and (a1 or "").lower() in READ_PRAGMAS and (a2 is None or a1 in ARG_PRAGMAS):
        return sqlite3.SQLITE_OK
    if name == "UPDATE" and a1 in SCHEMA_TABLES and trig is None:
        return sqlite3.SQLITE_OK  # schema bookkeeping while compiling; query_only stops any real write
    return sqlite3.SQLITE_DENY


class SqliteAdapter(Adapter):
    kind = "sqlite"
    settings_model = SqliteSettings
    tools = frozenset({"sql_query", "sql_execute", "sql_schema"})

    def __init__(self, name: str, settings: AdapterSettings, secrets: Mapping[str, str], *,
                 base_dir: str, state_dir: str) -> None:
        super().__init__(name, settings, secrets, base_dir=base_dir, state_dir=state_dir)
        assert isinstance(settings, SqliteSettings)
        self.s = settings
        self.path = Path(base_dir, settings.path)
        self._lock = threading.RLock()
        self._ro: sqlite3.Connection | None = None
        self._rw: sqlite3.Connection | None = None
        self._deadline = 0.0

    # -------------------------------------------------------------- connections

    def _check_file(self) -> None:
        if not self.path.exists():
            raise AdapterError(f"the database file for target {self.name!r} does not exist ({self.s.path})")

    def _connect_ro(self) -> sqlite3.Connection:
        if self._ro is None:
            self._check_file()
            conn = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None,
                                   check_same_thread=False)
            conn.execute("PRAGMA query_only = 1")
            conn.set_progress_handler(self._timed_out, 10_000)
            self._ro = conn
        return self._ro

    def _connect_rw(self) -> sqlite3.Connection:
        if self._rw is None:
            self._check_file()
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=5)
            conn.execute("PRAGMA recursive_triggers = 1")  # REPLACE's implicit deletes fire capture triggers
            conn.execute(f"PRAGMA foreign_keys = {1 if self.s.foreign_keys else 0}")
            conn.set_progress_handler(self._timed_out, 10_000)
            self._rw = conn
        return self._rw

    def _timed_out(self) -> int:
        return 1 if self._deadline and time.monotonic() > self._deadline else 0

    def _start_clock(self) -> None:
        self._deadline = time.monotonic() + self.s.statement_timeout_s

    def close(self) -> None:
        with self._lock:
            for conn in (self._ro, self._rw):
                if conn is not None:
                    conn.close()
            self._ro = self._rw = None

    # -------------------------------------------------------------- contract

    def classify(self, call: Call) -> Classification:
        if call.tool == "sql_schema":
            return Classification(effect=Effect.READ, reason="schema", summary="schema", detail={"op": "schema"})
        sql, params = _sql_args(call)
        with self._lock:
            acts = collect(self._connect_ro(), sql, params)
        return classify_actions(acts)

    def preview(self, call: Call, classification: Classification, budget: Budget) -> Preview:
        if classification.effect is Effect.READ:
            return Preview(effect=Effect.READ, affected=0, notes=["reads change nothing"])
        with self._lock:
            return self._write(call, classification, budget, commit=False)[0]

    def execute(self, call: Call, classification: Classification, budget: Budget) -> Outcome:
        if call.tool == "sql_schema":
            return self._schema(call.args.get("table"))
        if classification.effect is Effect.READ:
            return self._read(call, budget)
        with self._lock:
            return self._write(call, classification, budget, commit=True)[1]

    def compensate(self, compensation: Mapping[str, Any], budget: Budget) -> Outcome:
        with self._lock:
            conn = self._connect_rw()
            self._start_clock()
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    n, summary = self._apply_compensation(conn, compensation)
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                raise AdapterError(f"undo failed and was rolled back: {exc}") from None
            return Outcome(affected=n, summary=summary, result={"restored": n})

    @classmethod
    def sandbox_copy(cls, settings: AdapterSettings, base_dir: str, sandbox_dir: str) -> AdapterSettings | None:
        assert isinstance(settings, SqliteSettings)
        src = Path(base_dir, settings.path).resolve()
        if not src.exists():
            return None
        # Targets naming the same file share one copy, as they share the file.
        dst = Path(sandbox_dir, hashlib.sha256(str(src).encode()).hexdigest()[:16], src.name)
        if not dst.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            # The backup API copies a consistent database, including what is still in the WAL.
            with closing(sqlite3.connect(f"{src.as_uri()}?mode=ro", uri=True)) as a, closing(sqlite3.connect(dst)) as b:
                a.backup(b)
        return settings.model_copy(update={"path": str(dst)})

    @classmethod
    def describe(cls, settings: AdapterSettings) -> dict[str, str]:
        assert isinstance(settings, SqliteSettings)
        return {"reaches": f"sqlite file {settings.path}",
                "compensation": "before-images of changed rows; dropped tables kept aside (soft drop)"}

    # -------------------------------------------------------------- reads

    def _read(self, call: Call, budget: Budget) -> Outcome:
        sql, params = _sql_args(call)
        with self._lock:
            conn = self._connect_ro()
            conn.set_authorizer(_read_authorizer)
            self._start_clock()
            try:
                cur = conn.execute(sql, params if params is not None else ())
                rows = cur.fetchmany(budget.rows_returned + 1)
                columns = [d[0] for d in cur.description or ()]
                cur.close()
            except sqlite3.DatabaseError as exc:
                raise AdapterError(_explain_error(exc, self._deadline)) from None
            finally:
                conn.set_authorizer(None)
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
        truncated = len(rows) > budget.rows_returned
        rows = rows[: budget.rows_returned]
        return Outcome(
            result={"columns": columns, "rows": [[encode(v) for v in r] for r in rows],
                    "row_count": len(rows), "truncated": truncated},
            summary=f"{len(rows)} rows" + (f" (truncated at rows_returned={budget.rows_returned})" if truncated else ""),
        )

    def _schema(self, table: str | None) -> Outcome:
        with self._lock:
            conn = self._connect_ro()
            try:
                names = [r[0] for r in conn.execute(
                    "SELECT name FROM sqlite_schema WHERE type IN ('table', 'view') AND name NOT LIKE 'sqlite_%' "
                    "AND name NOT LIKE ? ORDER BY name", (INTERNAL_PREFIX + "%",)).fetchall()]
                if table is not None and table not in names:
                    raise AdapterError(f"no table named {table!r}; tables: {', '.join(names) or 'none'}")
                tables = []
                for name in [table] if table else names:
                    cols = [{"name": r[1], "type": r[2], "not_null": bool(r[3]), "default": r[4], "pk": r[5]}
                            for r in conn.execute(f"PRAGMA main.table_info({q(name)})").fetchall()]
                    entry: dict[str, Any] = {"name": name, "columns": cols}
                    if table:
                        entry["indexes"] = [r[1] for r in conn.execute(f"PRAGMA main.index_list({q(name)})")]
                        entry["foreign_keys"] = [{"column": r[3], "references": f"{r[2]}.{r[4]}", "on_delete": r[6]}
                                                 for r in conn.execute(f"PRAGMA main.foreign_key_list({q(name)})")]
                    tables.append(entry)
            except sqlite3.DatabaseError as exc:
                raise AdapterError(f"could not read the schema: {exc}") from None
        return Outcome(result={"tables": tables}, summary=f"{len(tables)} tables")

    # -------------------------------------------------------------- writes

    def _write(self, call: Call, cls: Classification, budget: Budget, *, commit: bool) -> tuple[Preview, Outcome]:
        """Run a write in one transaction; commit only when `commit` and within `budget`."""
        sql, params = _sql_args(call)
        op = cls.detail.get("op")
        conn = self._connect_rw()
        self._start_clock()
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise AdapterError(f"the database is busy ({exc}); retry in a moment") from None
        try:
            if op == "drop_table":
                preview, outcome = self._soft_drop(conn, cls.detail["table"])
            elif op in {"dml", "create"}:
                preview, outcome = self._dml(conn, sql, params, cls, budget)
            elif op == "drop_object":
                preview, outcome = self._drop_object(conn, sql, params, cls)
            elif op == "irreversible":
                conn.execute(sql, params if params is not None else ())
                preview = Preview(effect=Effect.IRREVERSIBLE, affected=0,
                                  notes=[f"{cls.summary} cannot be undone by safe-mcp"])
                outcome = Outcome(affected=0, summary=cls.summary)
            else:
                raise AdapterError(f"{cls.reason}: safe-mcp has no way to run or undo this on SQLite")
            if preview.affected is not None and preview.affected > budget.rows_affected:
                raise TooManyRows(preview.affected, budget.rows_affected)
            if commit and preview.effect.rank > budget.allowed_effect.rank:
                raise Escalated(preview.effect, "; ".join(preview.notes) or cls.reason, preview)
        except BaseException as exc:
            conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.DatabaseError):
                raise AdapterError(_explain_error(exc, self._deadline)) from None
            raise
        conn.execute("COMMIT" if commit else "ROLLBACK")
        return preview, outcome

    def _dml(self, conn: sqlite3.Connection, sql: str, params: Any, cls: Classification,
             budget: Budget) -> tuple[Preview, Outcome]:
        tables = set(cls.detail.get("tables", []))
        cap = Capture(conn, tables)
        cap.install()
        counts_before = {t: conn.execute(f"SELECT count(*) FROM main.{q(t)}").fetchone()[0]
                         for t in tables if "DELETE" in cls.detail.get("verbs", []) or
                         "UPDATE" in cls.detail.get("verbs", [])}
        conn.execute(sql, params if params is not None else ())
        changes = cap.changes()
        cap.remove()
        affected = count_changes(changes)
        effect, notes = cls.effect, []
        for c in changes:
            before = counts_before.get(c["table"], 0)
            touched = len(c["deleted"]) + len(c["updated"])
            if before > 1 and touched >= before and effect.rank < Effect.DESTRUCTIVE.rank:
                effect = Effect.DESTRUCTIVE
                notes.append(f"it changes every row of {c['table']} ({before} rows)")
        preview = Preview(effect=effect, affected=affected, sample=sample(changes, _SAMPLE), notes=notes)
        comp: dict[str, Any] = {"op": "rows", "changes": changes, "affected": affected}
        if cls.detail.get("op") == "create":
            comp = {"op": "drop_created", "type": cls.detail["type"], "name": cls.detail["name"], "affected": 0}
        return preview, Outcome(affected=affected, compensation=comp, summary=cls.summary)

    def _soft_drop(self, conn: sqlite3.Connection, table: str) -> tuple[Preview, Outcome]:
        count = conn.execute(f"SELECT count(*) FROM main.{q(table)}").fetchone()[0]
        cur = conn.execute(f"SELECT * FROM main.{q(table)} LIMIT {_SAMPLE}")
        cols = [d[0] for d in cur.description]
        rows = [{"table": table, "change": "drop", "before": dict(zip(cols, [encode(v) for v in r], strict=True))}
                for r in cur.fetchall()]
        trash = f"{INTERNAL_PREFIX}trash_{new_id('t').split('_', 1)[1]}_{table}"[:120]
        conn.execute(f"ALTER TABLE main.{q(table)} RENAME TO {q(trash)}")
        preview = Preview(effect=Effect.DESTRUCTIVE, affected=count, sample=rows,
                          notes=[f"table {table} ({count} rows) is moved aside, not destroyed; undo restores it"])
        outcome = Outcome(affected=count, summary=f"DROP TABLE {table} (kept as {trash})",
                          compensation={"op": "restore_table", "table": table, "trash": trash, "affected": count},
                          result={"dropped": table, "rows": count})
        return preview, outcome

    def _drop_object(self, conn: sqlite3.Connection, sql: str, params: Any,
                     cls: Classification) -> tuple[Preview, Outcome]:
        row = conn.execute("SELECT sql FROM sqlite_schema WHERE type = ? AND name = ?",
                           (cls.detail["type"], cls.detail["name"])).fetchone()
        if row is None or row[0] is None:
            raise AdapterError(f"{cls.detail['type']} {cls.detail['name']} has no definition to keep; not dropped")
        conn.execute(sql, params if params is not None else ())
        preview = Preview(effect=Effect.WRITE, affected=0, notes=[f"the definition of {cls.detail['name']} is kept"])
        return preview, Outcome(affected=0, summary=cls.summary, compensation={"op": "recreate", "sql": row[0],
                                                                                 "affected": 0})

    def _apply_compensation(self, conn: sqlite3.Connection, comp: Mapping[str, Any]) -> tuple[int, str]:
        op = comp.get("op")
        if op == "rows":
            n = restore(conn, comp["changes"])
            return n, f"{n} rows restored"
        if op == "restore_table":
            table, trash = comp["table"], comp["trash"]
            exists = conn.execute("SELECT 1 FROM sqlite_schema WHERE name = ?", (table,)).fetchone()
            if exists:
                raise AdapterError(f"a table named {table} exists again; rename or drop it, then undo")
            conn.execute(f"ALTER TABLE main.{q(trash)} RENAME TO {q(table)}")
            return int(comp.get("affected", 0)), f"table {table} restored"
        if op == "drop_created":
            kind, name = comp["type"], comp["name"]
            if kind == "table":
                trash = f"{INTERNAL_PREFIX}trash_{new_id('t').split('_', 1)[1]}_{name}"[:120]
                conn.execute(f"ALTER TABLE main.{q(name)} RENAME TO {q(trash)}")
                return 0, f"table {name} moved aside as {trash}"
            conn.execute(f"DROP {kind.upper()} main.{q(name)}")
            return 0, f"{kind} {name} dropped"
        if op == "recreate":
            conn.execute(comp["sql"])
            return 0, "definition restored"
        raise AdapterError(f"unknown compensation {op!r}")


def _sql_args(call: Call) -> tuple[str, Any]:
    sql = call.args.get("sql")
    if not isinstance(sql, str) or not sql.strip():
        raise AdapterError("sql must be a non-empty string holding one statement")
    params = call.args.get("params")
    if params is not None and not isinstance(params, (list, dict)):
        raise AdapterError("params must be a list (for ? placeholders) or an object (for :name placeholders)")
    return sql, params


def _explain_error(exc: sqlite3.Error, deadline: float) -> str:
    text = str(exc)
    if isinstance(exc, sqlite3.OperationalError) and "interrupted" in text and deadline and time.monotonic() > deadline:
        return "the statement ran past statement_timeout_s and was stopped; narrow it or raise the limit"
    if "not authorized" in text:
        return "this statement tried to do more than read; reads run on a read-only connection"
    if "FOREIGN KEY constraint failed" in text:
        return "FOREIGN KEY constraint failed: rows in other tables refer to the rows this would change; change those first"
    if "no such table" in text:
        return f"{text}; the sql_schema tool lists the tables"
    if "attempt to write a readonly database" in text:
        return "this statement tried to write; reads run on a read-only connection"
    return f"sqlite: {text}"
