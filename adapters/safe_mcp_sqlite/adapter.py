"""SQLite: reads on a read-only connection, writes with before-images, soft drop, undo."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

from safe_mcp.adapter import Adapter, AdapterSettings, Budget, Call, Classification, Outcome, Preview, Reconciled
from safe_mcp.effects import Effect
from safe_mcp.errors import AdapterError, Drifted, Escalated, TargetUnavailable, TooManyRows
from safe_mcp.state.receipts import new_id
from safe_mcp_sqlite import journal, read, write
from safe_mcp_sqlite.capture import Capture, purge
from safe_mcp_sqlite.classify import (
    classify_actions,
    collect,
)
from safe_mcp_sqlite.engine import check_file, roll_back_hot_journal, state_error
from safe_mcp_sqlite.guard import Guard
from safe_mcp_sqlite.settings import SqliteSettings, SqliteSpec

_SAMPLE = 5
_LARGE_UNDO = 500
"""An undo of this many rows drops the capture triggers first: copying what it puts back costs more than
making the triggers again for the next write."""


class SqliteAdapter(SqliteSpec, Adapter):
    journals: ClassVar[bool] = True

    def __init__(self, name: str, settings: AdapterSettings, secrets: Mapping[str, str], *,
                 base_dir: str, state_dir: str) -> None:
        super().__init__(name, settings, secrets, base_dir=base_dir, state_dir=state_dir)
        assert isinstance(settings, SqliteSettings)
        self.s = settings
        self.path = Path(base_dir, settings.path)
        self._lock = threading.RLock()
        self._ro: sqlite3.Connection | None = None
        self._rw: sqlite3.Connection | None = None
        self._guard = Guard()
        self._capture: Capture | None = None
        self._deadline = 0.0

    # -------------------------------------------------------------- connections

    def _connect_ro(self) -> sqlite3.Connection:
        """The read-only connection, after rolling back any journal a crashed writer left.

        Raises:
            TargetUnavailable: the file is missing, or its journal cannot be rolled back.
        """
        check_file(self.name, self.path, self.s.path)
        roll_back_hot_journal(self.name, self.path, timeout_s=5)
        if self._ro is None:
            try:
                conn = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None,
                                       check_same_thread=False)
                conn.execute("PRAGMA query_only = 1")
            except sqlite3.Error as exc:
                raise self._unavailable(exc) from None
            conn.set_progress_handler(self._timed_out, 10_000)
            self._ro = conn
        return self._ro

    def _connect_rw(self) -> sqlite3.Connection:
        """The write connection; every statement on it passes `self._guard`.

        Raises:
            TargetUnavailable: the file is missing or cannot be opened.
        """
        check_file(self.name, self.path, self.s.path)
        if self._rw is None:
            try:
                conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=5)
                conn.execute("PRAGMA recursive_triggers = 1")  # REPLACE's implicit deletes fire capture triggers
                conn.execute(f"PRAGMA foreign_keys = {1 if self.s.foreign_keys else 0}")
            except sqlite3.Error as exc:
                raise self._unavailable(exc) from None
            conn.set_progress_handler(self._timed_out, 10_000)
            conn.set_authorizer(self._guard)
            self._rw = conn
        return self._rw

    def _unavailable(self, exc: sqlite3.Error) -> TargetUnavailable:
        return state_error(exc, self.name, self.path) or TargetUnavailable(
            f"sqlite cannot open {self.path}: {exc}", f"check the file and the `path` key of [targets.{self.name}]")

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
            self._capture = None

    # -------------------------------------------------------------- contract

    def classify(self, call: Call) -> Classification:
        if call.tool == "sql_schema":
            return Classification(effect=Effect.READ, reason="schema", summary="schema", detail={"op": "schema"})
        sql, params = _sql_args(call)
        with self._lock:
            acts = collect(self._connect_ro(), sql, params, state=lambda exc: state_error(exc, self.name, self.path))
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
            if int(compensation.get("affected", 0) or 0) >= _LARGE_UNDO:
                self._drop_capture(self._connect_rw())
            else:
                self._drop_stale_capture(self._connect_rw())
            conn = self._begin()
            cap = self._capture  # still installed for a small undo: what it copies of the undo is dropped below
            try:
                marks = cap.marks() if cap is not None else None
                n, summary = write.compensate(conn, compensation)
                if cap is not None and marks is not None:
                    # The undo's own row events: its journal entry has no compensation, so nothing reads them,
                    # and they would keep a copy of the restored rows after the write's are pruned.
                    cap.forget_since(marks)
                journal.ensure(conn)
                journal.record(conn, budget.intent_id or new_id("intent"), "undo", n, summary, None)
            except BaseException as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise self._db_error(exc, "undo failed and was rolled back: ") from None
                if isinstance(exc, AdapterError) and not isinstance(exc, TargetUnavailable):
                    raise AdapterError(f"undo refused: {exc}") from None
                raise
            self._finish(conn, commit=True)
            return Outcome(affected=n, summary=summary, result={"restored": n})

    def reconcile(self, intent_id: str, call: Call) -> Reconciled:
        """From the journal committed with each write: a row for `intent_id` means it committed.

        Raises:
            TargetUnavailable: the database cannot be read now; ask again later.
        """
        with self._lock:
            conn = self._connect_ro()
            try:
                found = journal.lookup(conn, intent_id)
            except sqlite3.Error as exc:
                raise self._db_error(exc, "could not read safe-mcp's journal: ") from None
            finally:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
        if found is None:
            return Reconciled(state="not_executed",
                              detail=f"no journal entry for {intent_id} in {self.path}: the write rolled back or never ran")
        affected, summary, comp = found
        return Reconciled(state="executed", outcome=Outcome(affected=affected, compensation=comp, summary=summary),
                          detail=f"journaled in {self.path} with the write")

    # -------------------------------------------------------------- reads

    def _read(self, call: Call, budget: Budget) -> Outcome:
        sql, params = _sql_args(call)
        with self._lock:
            conn = self._connect_ro()
            self._start_clock()
            try:
                return read.read(conn, sql, params, budget)
            except sqlite3.DatabaseError as exc:
                raise self._db_error(exc) from None

    def _schema(self, table: str | None) -> Outcome:
        with self._lock:
            conn = self._connect_ro()
            try:
                return read.schema(conn, table)
            except sqlite3.DatabaseError as exc:
                raise self._db_error(exc, "could not read the schema: ") from None

    # -------------------------------------------------------------- writes

    def _begin(self) -> sqlite3.Connection:
        conn = self._connect_rw()
        self._start_clock()
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise self._db_error(exc, "could not start the write: ") from None
        return conn

    def _db_error(self, exc: sqlite3.Error, prefix: str = "") -> AdapterError:
        return state_error(exc, self.name, self.path) or AdapterError(prefix + _explain_error(exc, self._deadline))

    def _drop_stale_capture(self, conn: sqlite3.Connection) -> None:
        """Capture triggers made for another schema would fail on (or miss columns of) any later write,
        safe-mcp's own included: drop them before the write's transaction begins.

        Raises:
            TargetUnavailable: the schema could not be read (locked, damaged).
        """
        try:
            version = conn.execute("PRAGMA main.schema_version").fetchone()[0]
            if self._capture is None or self._capture.version != version:
                self._capture = None
                purge(conn)
        except sqlite3.Error as exc:
            raise self._db_error(exc) from None

    def _drop_capture(self, conn: sqlite3.Connection) -> None:
        """Drop the capture triggers before a large undo: nothing reads what they would copy of the rows undo
        puts back (undo's own journal entry has no compensation), and that copy costs as much as the undo.
        The next write installs them again.

        Raises:
            TargetUnavailable: the schema could not be read (locked, damaged).
        """
        try:
            self._capture = None
            purge(conn)
        except sqlite3.Error as exc:
            raise self._db_error(exc) from None

    def _capture_for(self, conn: sqlite3.Connection, tables: set[str]) -> Capture:
        """Capture triggers for `tables`, kept installed on the write connection while the schema is unchanged.

        Called outside any transaction: the temporary triggers then survive the ROLLBACK of a preview.
        """
        version = conn.execute("PRAGMA main.schema_version").fetchone()[0]
        cap = self._capture
        if cap is not None and cap.version == version and tables <= cap.tables:
            return cap
        keep = cap.tables if cap is not None and cap.version == version else frozenset()
        if cap is not None:
            cap.remove()
        self._capture = None
        fresh = Capture(conn, set(tables | keep))
        fresh.install()
        # Installing may create a journal table, which changes the schema_version it is keyed by.
        fresh.version = conn.execute("PRAGMA main.schema_version").fetchone()[0]
        self._capture = fresh
        return fresh

    def _write(self, call: Call, cls: Classification, budget: Budget, *, commit: bool) -> tuple[Preview, Outcome]:
        """Run a write in one transaction; commit only when `commit` and within `budget`, with its journal entry."""
        sql, params = _sql_args(call)
        op = cls.detail.get("op")
        cap: Capture | None = None
        conn = self._connect_rw()
        self._drop_stale_capture(conn)
        if op in {"dml", "create"}:
            try:
                cap = self._capture_for(conn, set(cls.detail.get("tables", [])))
            except sqlite3.Error as exc:
                self._capture = None
                raise self._db_error(exc) from None
        conn = self._begin()
        try:
            if cap is not None and conn.execute("PRAGMA main.schema_version").fetchone()[0] != cap.version:
                # Another connection changed the schema after the triggers were made: make them again,
                # inside this transaction (so they go if it rolls back).
                self._capture = None
                cap = Capture(conn, set(cap.tables))
                cap.install()  # not kept: it goes with this transaction if that rolls back
            if op == "drop_table":
                preview, outcome, fp = write.soft_drop(conn, cls.detail["table"])
            elif op in {"dml", "create"}:
                assert cap is not None
                preview, outcome, fp = write.dml(conn, self._guard, cap, sql, params, cls)
            elif op == "drop_object":
                preview, outcome, fp = write.drop_object(conn, self._guard, sql, params, cls)
            elif op == "irreversible":
                preview, outcome, fp = write.irreversible(conn, self._guard, sql, params, cls)
            else:
                raise AdapterError(f"{cls.reason}: safe-mcp has no way to run or undo this on SQLite")
            if preview.affected is not None and preview.affected > budget.rows_affected:
                raise TooManyRows(preview.affected, budget.rows_affected)
            if not commit:
                preview = preview.model_copy(update={"fingerprint": fp()})
            else:
                self._check_drift(preview, fp, cls, budget)
                if preview.effect.rank > budget.allowed_effect.rank:
                    raise Escalated(preview.effect, "; ".join(preview.notes) or cls.reason,
                                    preview.model_copy(update={"fingerprint": fp()}))
                intent = budget.intent_id or new_id("intent")
                if outcome.compensation is not None and outcome.compensation.get("op") == "journal":
                    # Undo checks that this entry is still there before trusting the ranges it points at.
                    outcome = outcome.model_copy(update={"compensation": {**outcome.compensation, "intent_id": intent}})
                journal.ensure(conn)
                journal.record(conn, intent, call.tool, outcome.affected, outcome.summary, outcome.compensation)
                journal.prune(conn, self.s.journal_keep_days)
        except BaseException as exc:
            if conn.in_transaction:  # some errors (an interrupt, a full disk) have rolled back already
                conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise self._db_error(exc) from None
            raise
        self._finish(conn, commit)
        return preview, outcome

    def _finish(self, conn: sqlite3.Connection, commit: bool) -> None:
        """
        Raises:
            TargetUnavailable: COMMIT could not get its lock (readers held on); rolled back.
        """
        try:
            conn.execute("COMMIT" if commit else "ROLLBACK")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise self._db_error(exc, "the write could not commit and was rolled back: ") from None

    @staticmethod
    def _check_drift(now: Preview, fp: Callable[[], str | None], cls: Classification, budget: Budget) -> None:
        """At confirm: the change about to commit must be the one previewed, or a smaller part of it.

        Raises:
            Drifted: more rows, or other rows (or rows whose content changed since), than the preview showed.
        """
        shown = budget.expect
        if shown is None:
            return
        current = fp()
        more = shown.affected is not None and now.affected is not None and now.affected > shown.affected
        other = shown.fingerprint is not None and current != shown.fingerprint
        if not (more or other):
            return
        why = (f"it would now change {now.affected} rows where the preview showed {shown.affected}" if more
               else "the rows it would change are not the ones the preview showed (they changed since)")
        effect = max(now.effect, budget.allowed_effect, key=lambda e: e.rank)
        raise Drifted(effect, f"the target changed between the preview and the confirmation: {why}; "
                              "nothing was committed, check the new preview",
                      now.model_copy(update={"effect": effect, "fingerprint": current}))


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
