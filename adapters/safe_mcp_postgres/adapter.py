"""PostgreSQL: reads in READ ONLY transactions that are always rolled back, streamed from a server-side
cursor within rows_returned and bytes_returned; writes whose before-images are journaled in the target
(schema _safe_mcp) by the write's own statement, under the gate's intent id, so that undo and reconcile
read them there; soft DROP TABLE and TRUNCATE into a trash schema; undo that first checks the target is
as the write left it; confirms that re-measure; pooled sessions discarded before reuse; an audit of the role.

Layout: classify (no I/O), engine (connections, errors), reads, capture (row images and their undo),
journal, tables (table-level writes and their undo), values (JSON)."""

from __future__ import annotations

import functools
import json
import uuid
from collections.abc import Mapping
from typing import Any

import psycopg

from safe_mcp.adapter import Adapter, AdapterSettings, Budget, Call, Classification, Outcome, Preview, Reconciled
from safe_mcp.effects import Effect
from safe_mcp.errors import AdapterError, Drifted, Escalated, TooManyRows
from safe_mcp_postgres import journal, tables
from safe_mcp_postgres.capture import capture_sql, journaled_sql, max_param, measured, restore_rows, table_info
from safe_mcp_postgres.classify import classify_sql, parse_one
from safe_mcp_postgres.engine import PLAIN_OIDS, Engine, qi, run_one, translate
from safe_mcp_postgres.reads import bounded_fetch
from safe_mcp_postgres.settings import PostgresSettings, PostgresSpec
from safe_mcp_postgres.values import json_rows, jsonable

_SAMPLE = 5
_RETURNING = 100  # rows of a write's own RETURNING shown to the agent


class PostgresAdapter(PostgresSpec, Adapter):
    def __init__(self, name: str, settings: AdapterSettings, secrets: Mapping[str, str], *,
                 base_dir: str, state_dir: str) -> None:
        super().__init__(name, settings, secrets, base_dir=base_dir, state_dir=state_dir)
        assert isinstance(settings, PostgresSettings)
        self.s = settings
        self.limits = {"statement_timeout": settings.statement_timeout_ms, "lock_timeout": settings.lock_timeout_ms,
                       "idle_in_transaction_session_timeout": settings.idle_in_transaction_timeout_ms}
        self.engine = Engine(name, settings.dsn, secrets.get("password"), options=self.limits,
                             min_size=settings.pool_min_size, max_size=settings.pool_max_size,
                             connect_timeout_s=settings.connect_timeout_s)

    def close(self) -> None:
        self.engine.close()

    def _error(self, exc: psycopg.Error) -> AdapterError:
        return translate(exc, self.engine, limits=self.limits, tables=self._table_names)

    # -------------------------------------------------------------- contract

    def classify(self, call: Call) -> Classification:
        if call.tool == "sql_schema":
            return Classification(effect=Effect.READ, reason="schema", summary="schema", detail={"op": "schema"})
        sql, _params = _sql_args(call)
        if len(sql) <= _CACHED_SQL_CHARS:
            return _classify_cached(sql, self.s.trash_schema)
        return classify_sql(sql, self.s.trash_schema)

    def preview(self, call: Call, classification: Classification, budget: Budget) -> Preview:
        if classification.effect is Effect.READ:
            return Preview(effect=Effect.READ, affected=0, notes=["reads change nothing"])
        return self._write(call, classification, budget, commit=False)[0]

    def execute(self, call: Call, classification: Classification, budget: Budget) -> Outcome:
        if call.tool == "sql_schema":
            return self._schema(call.args.get("table"))
        if classification.effect is Effect.READ:
            return self._read(call, budget, cursor=bool(classification.detail.get("cursor")))
        return self._write(call, classification, budget, commit=True)[1]

    journals = True

    def compensate(self, compensation: Mapping[str, Any], budget: Budget) -> Outcome:
        comp = dict(compensation)
        try:
            with self.engine.connection() as conn:
                conn.read_only = False
                n, summary = self._apply_compensation(conn, comp)
                if budget.intent_id is not None:
                    missing = journal.ensure(conn)
                    if missing is None:
                        journal.record(conn, budget.intent_id, "undo", n, None)
                conn.commit()
        except psycopg.Error as exc:
            raise AdapterError(f"undo failed and was rolled back: {self._error(exc)}") from None
        return Outcome(affected=n, summary=summary, result={"restored": n})

    def reconcile(self, intent_id: str, call: Call) -> Reconciled:
        """What the journal in the target says became of `intent_id`.

        Raises:
            AdapterError: the target could not be asked.
        """
        journaled = False
        if call.tool == "sql_execute":
            try:
                classified = self.classify(call)
                op, journaled = classified.detail.get("op"), classified.compensable
            except AdapterError:
                op = None
            if op == "autocommit":
                return Reconciled(state="unknown", detail=f"{call.tool} on {self.name!r} ran outside a transaction "
                                                          "and is not journaled; check the database by hand")
        try:
            with self.engine.connection() as conn:
                conn.read_only = True
                try:
                    found = journal.lookup(conn, intent_id)
                except AdapterError as exc:
                    if journaled or call.tool == "undo":
                        # A journaled write commits together with its journal row (and the journal itself),
                        # so no journal at all means it never committed.
                        return Reconciled(state="not_executed", detail=f"{exc}: the write never committed")
                    return Reconciled(state="unknown", detail=f"{exc}; check target {self.name!r} by hand")
        except psycopg.errors.InsufficientPrivilege:
            return Reconciled(state="unknown", detail=f"the role of target {self.name!r} cannot read the journal "
                                                      f"{journal.TABLE}; check the database by hand")
        except psycopg.Error as exc:
            raise self._error(exc) from None
        if found is None:
            return Reconciled(state="not_executed", detail=f"no journal entry for {intent_id} in {journal.TABLE}")
        kind, affected, comp = found
        if comp is not None:
            comp = {**comp, "affected": affected}  # row writes journal their count beside the compensation
        summary = "undo" if kind == "undo" else f"{call.tool} committed (found in the journal)"
        return Reconciled(state="executed", outcome=Outcome(affected=affected, compensation=comp, summary=summary),
                          detail=f"journaled in {journal.TABLE}")

    def audit(self) -> dict[str, Any]:
        """What the role could do beyond read-only access (superuser, write privileges, server files)."""
        try:
            with self.engine.connection() as conn:
                conn.read_only = True
                row = conn.execute(_AUDIT_SQL).fetchone()
        except psycopg.Error as exc:
            raise self._error(exc) from None
        assert row is not None
        (user, superuser, createrole, createdb, replication, bypassrls, read_files, write_files, program, signal,
         write_all, db_create, n_writable, writable, create_in) = row
        findings = []
        if superuser:
            findings.append(f"role {user} is a superuser: it can write anything, read and write server files and "
                            "run programs")
        for flag, text in ((createrole, "can create roles (CREATEROLE)"), (createdb, "can create databases"),
                           (replication, "has REPLICATION"), (bypassrls, "bypasses row-level security"),
                           (read_files, "is a member of pg_read_server_files"),
                           (write_files, "is a member of pg_write_server_files"),
                           (program, "is a member of pg_execute_server_program"),
                           (signal, "is a member of pg_signal_backend (can cancel other sessions)"),
                           (write_all, "is a member of pg_write_all_data"),
                           (db_create, "can create schemas in this database")):
            if flag and not superuser:
                findings.append(f"role {user} {text}")
        if n_writable and not superuser:
            findings.append(f"role {user} can write to {n_writable} tables (e.g. {', '.join(writable)})")
        if create_in and not superuser:
            findings.append(f"role {user} can create objects in schemas {', '.join(create_in)}")
        can_write = bool(superuser or n_writable or create_in or db_create or write_files or program or write_all)
        return {"can_write": can_write, "findings": findings}

    # -------------------------------------------------------------- reads

    def _read(self, call: Call, budget: Budget, *, cursor: bool) -> Outcome:
        sql, params = _sql_args(call)
        try:
            with self.engine.connection() as conn:
                conn.read_only = True
                try:
                    if cursor:
                        columns, rows, mixed, cut = bounded_fetch(conn, sql, params, budget.rows_returned,
                                                                  budget.bytes_returned)
                    else:
                        cur = run_one(conn, sql, params)
                        rows = cur.fetchmany(budget.rows_returned + 1) if cur.description else []
                        columns = [d.name for d in cur.description or ()]
                        mixed = [i for i, d in enumerate(cur.description or ()) if d.type_code not in PLAIN_OIDS]
                        cut = "rows" if len(rows) > budget.rows_returned else None
                        rows = rows[: budget.rows_returned]
                finally:
                    conn.rollback()
        except psycopg.Error as exc:
            raise self._error(exc) from None
        why = {None: "", "rows": f" (truncated at rows_returned={budget.rows_returned})",
               "bytes": f" (truncated at bytes_returned={budget.bytes_returned}; select fewer or narrower columns, "
                        "or page with WHERE/LIMIT)"}[cut]
        return Outcome(
            result={"columns": columns, "rows": json_rows(rows, mixed), "row_count": len(rows),
                    "truncated": cut is not None},
            summary=f"{len(rows)} rows{why}",
        )

    def _table_names(self) -> list[str]:
        try:
            with self.engine.connection() as conn:
                conn.read_only = True
                rows = conn.execute(_TABLES_SQL, [self.s.trash_schema]).fetchall()
        except (psycopg.Error, AdapterError):
            return []
        return [_shown(s, n) for s, n, _k in rows]

    def _schema(self, table: str | None) -> Outcome:
        try:
            with self.engine.connection() as conn:
                conn.read_only = True
                listed = conn.execute(_TABLES_SQL, [self.s.trash_schema]).fetchall()
                names = {_shown(s, n): (s, n, k) for s, n, k in listed}
                if table is not None and table not in names:
                    raise AdapterError(f"no table named {table!r}; tables: {', '.join(names) or 'none'}")
                tables = []
                for shown in [table] if table else list(names):
                    schema, name, kind = names[shown]
                    oid = f"{qi(schema)}.{qi(name)}"
                    cols = [{"name": c, "type": t, "not_null": nn, "default": d}
                            for c, t, nn, d in conn.execute(_COLUMNS_SQL, [oid]).fetchall()]
                    entry: dict[str, Any] = {"name": shown, "kind": _KINDS.get(kind, kind), "columns": cols}
                    if table:
                        entry["indexes"] = [r[0] for r in conn.execute(
                            "SELECT pg_get_indexdef(indexrelid) FROM pg_index WHERE indrelid = to_regclass($1)",
                            [oid]).fetchall()]
                        entry["constraints"] = [r[0] for r in conn.execute(
                            "SELECT conname || ': ' || pg_get_constraintdef(oid) FROM pg_constraint "
                            "WHERE conrelid = to_regclass($1) ORDER BY conname", [oid]).fetchall()]
                    tables.append(entry)
        except psycopg.Error as exc:
            raise AdapterError(f"could not read the schema: {self._error(exc)}") from None
        return Outcome(result={"tables": tables}, summary=f"{len(tables)} tables")

    # -------------------------------------------------------------- writes

    def _write(self, call: Call, cls: Classification, budget: Budget, *, commit: bool) -> tuple[Preview, Outcome]:
        """Run a write in one transaction with its journal entry; commit only when `commit`, within `budget`
        and (at confirm) still matching the preview that was confirmed."""
        sql, params = _sql_args(call)
        op = cls.detail.get("op")
        if op == "autocommit":
            return self._autocommit(sql, cls, commit=commit)
        if op == "plain" and not commit:
            # No compensation exists, so it does not run at all before approval (not even rolled back:
            # sequences, for one, would still advance).
            return Preview(effect=cls.effect, affected=None, notes=[cls.reason, "not measured: it runs only once "
                                                                                "approved, and cannot be undone"]), Outcome()
        # A preview journals under a throwaway id (it is rolled back with everything else); so does a
        # write run without the gate, whose images the undo still needs.
        intent = budget.intent_id if commit and budget.intent_id else f"{'run' if commit else 'preview'}_{uuid.uuid4().hex}"
        try:
            with self.engine.connection() as conn:
                conn.read_only = False
                try:
                    no_journal = journal.ensure(conn)
                    if op in {"insert", "update", "delete"}:
                        preview, outcome = self._dml(conn, sql, params, cls, budget, intent, no_journal, commit)
                    elif op == "plain":
                        guard = tables.own_schemas(conn, self.s.trash_schema)
                        cur = run_one(conn, sql, params)
                        n = max(cur.rowcount, 0)
                        if tables.own_schemas(conn, self.s.trash_schema) != guard:
                            raise AdapterError("this statement would change safe-mcp's trash or journal (through "
                                               "CASCADE or a dependency); it was rolled back. Drop with RESTRICT, or "
                                               "restore or purge the trashed tables first")
                        preview = Preview(effect=cls.effect, affected=n, notes=[cls.reason, "no compensation exists"])
                        outcome = Outcome(affected=n, summary=cls.summary, result=_returned(cur, budget))
                    elif op in {"drop_table", "truncate", "create"}:
                        # Their undo lives in the trash, not the journal: without a journal they still run,
                        # and only reconcile after a crash cannot tell (it answers unknown).
                        preview, outcome = tables.run(op, conn, sql, params, cls, self.s.trash_schema)
                    else:
                        raise AdapterError(f"{cls.reason}: safe-mcp has no way to run this on PostgreSQL")
                    if no_journal is None and op not in {"insert", "update", "delete"}:
                        journal.record(conn, intent, "write", outcome.affected, outcome.compensation)
                    if preview.affected is not None and preview.affected > budget.rows_affected:
                        raise TooManyRows(preview.affected, budget.rows_affected)
                    if commit:
                        _still_as_previewed(budget.expect, preview)
                    if commit and preview.effect.rank > budget.allowed_effect.rank:
                        raise Escalated(preview.effect, "; ".join(preview.notes) or cls.reason, preview)
                    if commit:
                        if no_journal is None:
                            journal.prune(conn, self.s.journal_keep_days)
                        conn.commit()
                finally:
                    if not commit or conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                        conn.rollback()
        except psycopg.Error as exc:
            raise self._error(exc) from None
        return preview, outcome

    def _autocommit(self, sql: str, cls: Classification, *, commit: bool) -> tuple[Preview, Outcome]:
        preview = Preview(effect=cls.effect, affected=None, notes=[cls.reason, "it cannot run in a transaction, so "
                                                                              "it cannot be measured or undone"])
        if not commit:
            return preview, Outcome()
        try:
            with self.engine.connection() as conn:
                conn.autocommit = True
                try:
                    run_one(conn, sql, None)
                finally:
                    conn.autocommit = False
        except psycopg.Error as exc:
            raise self._error(exc) from None
        return preview, Outcome(affected=0, summary=cls.summary)

    def _dml(self, conn: psycopg.Connection[Any], sql: str, params: list[Any] | None, cls: Classification,
             budget: Budget, intent: str, no_journal: str | None,
             commit: bool) -> tuple[Preview, Outcome]:
        op = cls.detail["op"]
        info = table_info(conn, cls.detail.get("schema"), cls.detail["name"])
        hazard = info.irreversible_because() or no_journal
        effect, notes = cls.effect, []
        if hazard is not None and not commit and (info.triggers or info.rules):
            # Triggers and rules are code: they run only once a human approved, not for a preview (what they
            # do outside the transaction, a rollback would not take back).
            return (Preview(effect=effect.at_least(Effect.IRREVERSIBLE), affected=None,
                            notes=[f"no undo: {hazard}", "not measured: it runs only once approved"]), Outcome())
        if hazard is not None:
            cur = run_one(conn, sql, params)
            n = max(cur.rowcount, 0)
            if no_journal is None:
                journal.record(conn, intent, "write", n, None)
            effect = effect.at_least(Effect.IRREVERSIBLE)
            notes.append(f"no undo: {hazard}")
            return (Preview(effect=effect, affected=n, notes=notes),
                    Outcome(affected=n, summary=cls.summary, result=_returned(cur, None)))
        given = list(params or [])
        if max_param(sql) > len(given):
            raise AdapterError(f"the statement uses ${max_param(sql)} but params has {len(given)} values; pass one "
                               "value per placeholder")
        rewritten, extra = capture_sql(sql, info)
        comp = {"op": "rows", "version": 3, "journal": intent, "change": op, "schema": info.schema,
                "table": info.name, "columns": info.columns, "types": info.types, "key": info.key,
                "always": info.always}
        fingerprint = not commit or budget.expect is not None
        # Without a RETURNING of its own the statement answers with its one measurement row: the changed rows
        # (their images, and the measurement repeated on each) would cross the wire for nothing.
        shown = _RETURNING if parse_one(sql).returningClause is not None else 0
        cur = run_one(conn, journaled_sql(rewritten, op, info, len(given) + 1, returning=shown, samples=_SAMPLE,
                                          fingerprint=fingerprint),
                      [*given, intent, json.dumps(comp)])
        rows = cur.fetchall()
        width = len(cur.description or ()) - extra - 5
        got = measured(rows[0], info, op, fingerprint=fingerprint)
        n, samples, digest = got.affected, got.samples, got.fingerprint
        if n == 0:
            rows = []  # the one row carries only the measurement
        if got.every and effect.rank < Effect.DESTRUCTIVE.rank:
            effect = Effect.DESTRUCTIVE
            notes.append(f"it changes every row of {info.name} ({n} rows)")
        preview = Preview(effect=effect, affected=n, sample=samples, notes=notes, fingerprint=digest)
        result: dict[str, Any] = {"rows_affected": n}
        if width > 0:
            result["returning"] = [[jsonable(v) for v in r[:width]] for r in rows]
            result["columns"] = [d.name for d in (cur.description or ())[:width]]
        return preview, Outcome(affected=n, compensation={**comp, "affected": n}, summary=cls.summary, result=result)

    def _apply_compensation(self, conn: psycopg.Connection[Any], comp: dict[str, Any]) -> tuple[int, str]:
        if comp.get("op") == "rows":
            n = restore_rows(conn, comp)
            return n, f"{n} rows of {comp['table']} restored"
        return tables.undo(conn, comp, self.s.trash_schema)


# ------------------------------------------------------------------ helpers

_KINDS = {"r": "table", "p": "partitioned table", "v": "view", "m": "materialized view", "f": "foreign table"}

_TABLES_SQL = """
SELECT n.nspname, c.relname, c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f') AND n.nspname NOT IN ('pg_catalog', 'information_schema', $1, '_safe_mcp')
  AND n.nspname NOT LIKE 'pg\\_%' AND NOT c.relispartition
ORDER BY n.nspname <> 'public', n.nspname, c.relname
"""

_COLUMNS_SQL = """
SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull, pg_get_expr(d.adbin, d.adrelid)
FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum
"""

_AUDIT_SQL = """
SELECT current_user::text, r.rolsuper, r.rolcreaterole, r.rolcreatedb, r.rolreplication, r.rolbypassrls,
  pg_has_role(current_user, 'pg_read_server_files', 'MEMBER'),
  pg_has_role(current_user, 'pg_write_server_files', 'MEMBER'),
  pg_has_role(current_user, 'pg_execute_server_program', 'MEMBER'),
  pg_has_role(current_user, 'pg_signal_backend', 'MEMBER'),
  pg_has_role(current_user, 'pg_write_all_data', 'MEMBER'),
  has_database_privilege(current_database(), 'CREATE'),
  (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
      AND n.nspname NOT LIKE 'pg\\_%'
      AND has_table_privilege(c.oid, 'INSERT, UPDATE, DELETE, TRUNCATE')),
  coalesce((SELECT array_agg(x) FROM (SELECT c.relname::text AS x FROM pg_class c
    JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
      AND n.nspname NOT LIKE 'pg\\_%'
      AND has_table_privilege(c.oid, 'INSERT, UPDATE, DELETE, TRUNCATE') ORDER BY 1 LIMIT 5) s), '{}'),
  coalesce((SELECT array_agg(nspname::text ORDER BY nspname) FROM pg_namespace
    WHERE has_schema_privilege(oid, 'CREATE') AND nspname NOT LIKE 'pg\\_%' AND nspname <> 'information_schema'),
    '{}')
FROM pg_roles r WHERE r.rolname = current_user
"""


def _shown(schema: str, name: str) -> str:
    return name if schema == "public" else f"{schema}.{name}"


def _still_as_previewed(expect: Preview | None, now: Preview) -> None:
    """At confirm: refuse (before commit) a change bigger than, or other than, the one confirmed.

    Raises:
        Drifted: more rows, or other rows (or the same rows in another state), than the preview showed.
    """
    if expect is None:
        return
    more = expect.affected is not None and now.affected is not None and now.affected > expect.affected
    other = expect.fingerprint is not None and now.fingerprint != expect.fingerprint
    if more:
        raise Drifted(now.effect, f"the statement would now change {now.affected} rows, not the {expect.affected} "
                                  "that were confirmed; nothing was committed", now)
    if other:
        raise Drifted(now.effect, "the rows this statement would change are no longer the ones that were confirmed "
                                  "(other rows, or the same rows changed since); nothing was committed", now)


def _returned(cur: psycopg.Cursor[Any], budget: Budget | None) -> dict[str, Any]:
    out: dict[str, Any] = {"rows_affected": max(cur.rowcount, 0)}
    if cur.description:
        limit = budget.rows_returned if budget is not None else 100
        out["columns"] = [d.name for d in cur.description]
        out["returning"] = [[jsonable(v) for v in r] for r in cur.fetchmany(limit)]
    return out


def _sql_args(call: Call) -> tuple[str, list[Any] | None]:
    sql = call.args.get("sql")
    if not isinstance(sql, str) or not sql.strip():
        raise AdapterError("sql must be a non-empty string holding one statement")
    params = call.args.get("params")
    if params is None:
        return sql, None
    if not isinstance(params, list):
        raise AdapterError("params must be a list: one value per $1, $2, ... placeholder (PostgreSQL has no :name)")
    return sql, params


# Classification is a pure function of the text (the parser's tree, no catalog), so the statements
# an agent repeats are parsed once. Long texts are not kept; errors are never cached.
_CACHED_SQL_CHARS = 4096
_classify_cached = functools.lru_cache(maxsize=512)(classify_sql)
