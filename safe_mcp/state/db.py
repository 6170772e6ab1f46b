"""The database under the state store: an embedded SQLite file (the default) or a PostgreSQL server
that several safe-mcp instances share.

Both speak the same SQL, written once with `?` placeholders in the common subset of the two
dialects (`ON CONFLICT` upserts, no `INSERT OR ...`); `ddl()` adapts column types. A transaction
on SQLite is `BEGIN IMMEDIATE` (writers queue); on PostgreSQL it is an ordinary transaction, sent
pipelined (a round trip only where a result is read, and at COMMIT), and the state store serialises
what must be linear (the receipt chain) with a row lock on its head.
"""

from __future__ import annotations

import os
import re
import sqlite3
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from safe_mcp.errors import StateError

__all__ = ["Cursor", "PostgresDb", "SqliteDb", "StateDb"]


class Cursor(Protocol):
    """What a statement returns: enough of the DB-API cursor for the state store."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class Tx(Protocol):
    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor: ...

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> Any: ...


class StateDb(ABC):
    """One connection's worth of state database, safe to share between threads."""

    dialect: str
    where: str
    """Where it is, for messages (a path, or host:port/db without credentials)."""

    @abstractmethod
    def transaction(self) -> Any:
        """A context manager yielding a `Tx`; commits on exit, rolls back on error.

        Raises:
            StateError: the database failed.
        """

    @abstractmethod
    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Rows of one read. Raises StateError."""

    def ddl(self, script: str) -> list[str]:
        """`script`'s statements, with types adapted to this dialect (`--` comments removed first:
        they may hold a `;`)."""
        text = re.sub(r"--[^\n]*", "", script)
        return [s for s in (x.strip() for x in text.split(";")) if s]

    def json_field(self, column: str, key: str) -> str:
        """An SQL expression for the text of top-level `key` of JSON text `column` (key is checked by the caller)."""
        return f"json_extract({column}, '$.{key}')"

    @abstractmethod
    def close(self) -> None: ...


class SqliteDb(StateDb):
    dialect = "sqlite"

    def __init__(self, path: Path) -> None:
        self.where = str(path)
        try:
            if not path.exists():
                # Created 0600 before SQLite opens it; its -wal and -shm files take the same mode.
                os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
        except sqlite3.Error as exc:
            raise StateError(f"cannot open the state store {path}: {exc}") from None
        self._lock = threading.Lock()

    @contextmanager
    def transaction(self) -> Iterator[Tx]:
        from safe_mcp.sqlitetx import immediate

        with immediate(self._db, self._lock, lambda exc: StateError(f"state store write failed: {exc}")) as db:
            yield db

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                return self._db.execute(sql, tuple(params)).fetchall()
            except sqlite3.Error as exc:
                raise StateError(f"state store read failed: {exc}") from None

    def close(self) -> None:
        with self._lock:
            self._db.close()


_TYPES = [(re.compile(r"\bREAL\b"), "DOUBLE PRECISION"), (re.compile(r"\bBLOB\b"), "BYTEA"),
          (re.compile(r"\bINTEGER\b"), "BIGINT")]


class _PgResult:
    """One statement's result in a pipelined transaction: reading it (rows or rowcount) waits for the
    server; a statement nobody reads costs no round trip of its own."""

    def __init__(self, cur: Any, pipeline: Any) -> None:
        self._cur = cur
        self._pipeline = pipeline

    @property
    def rowcount(self) -> int:
        if self._cur.pgresult is None:
            self._pipeline.sync()
        return int(self._cur.rowcount)

    def fetchone(self) -> Any:
        return self._cur.fetchone()

    def fetchall(self) -> list[Any]:
        return list(self._cur.fetchall())

    def __iter__(self) -> Iterator[Any]:
        return iter(self.fetchall())


class _PgTx:
    def __init__(self, conn: Any, pipeline: Any) -> None:
        self._conn = conn
        self._pipeline = pipeline

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        # A cursor per statement: several may be in flight at once, each keeping its own result.
        cur = self._conn.cursor()
        cur.execute(_pg_sql(sql), tuple(params))
        return _PgResult(cur, self._pipeline)

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> Any:
        cur = self._conn.cursor()
        cur.executemany(_pg_sql(sql), [tuple(r) for r in rows])
        return _PgResult(cur, self._pipeline)


def _pg_sql(sql: str) -> str:
    # Every statement of the state store is written with `?` placeholders and no literal `?` or `%`.
    return sql.replace("%", "%%").replace("?", "%s")


class PostgresDb(StateDb):
    """The state on a PostgreSQL server, in its own schema, shared by every instance pointed at it.

    A transaction is pipelined: BEGIN, the statements and COMMIT go out together, and the server is
    waited for only where a result is read (the chain head, a claim's rowcount) and at COMMIT. A read
    outside a transaction is one statement in autocommit: one round trip.
    """

    dialect = "postgres"

    def __init__(self, url: str, password: str | None = None, schema: str = "safe_mcp",
                 connect_timeout_s: float = 5) -> None:
        try:
            import psycopg
        except ImportError:
            raise StateError("state on PostgreSQL needs psycopg: pip install 'safe-mcp[postgres]'") from None
        from psycopg.conninfo import conninfo_to_dict

        if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", schema):
            raise StateError(f"state schema {schema!r} must be a lower-case SQL name")
        try:
            info = conninfo_to_dict(url)
        except psycopg.ProgrammingError as exc:
            raise StateError(f"the state url is not a valid PostgreSQL URL: {exc}") from None
        self.where = f"{info.get('host', 'localhost')}:{info.get('port', 5432)}/{info.get('dbname', '')}"
        self.schema = schema
        kwargs: dict[str, Any] = {"autocommit": True, "connect_timeout": max(1, int(connect_timeout_s))}
        if password:
            kwargs["password"] = password
        try:
            self._db = self._connect(url, kwargs)
            self._db.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
            self._db.execute(f'SET search_path TO "{schema}"')
        except psycopg.OperationalError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise StateError(f"cannot reach the PostgreSQL state store at {self.where}: {first}") from None
        except psycopg.Error as exc:
            raise StateError(f"cannot open the PostgreSQL state store at {self.where}: {exc}") from None
        self._lock = threading.RLock()
        self._psycopg = psycopg

    def _connect(self, url: str, kwargs: dict[str, Any]) -> Any:
        """The psycopg connection, in autocommit (a subclass may count what goes over it)."""
        import psycopg

        return psycopg.connect(url, **kwargs)

    @contextmanager
    def transaction(self) -> Iterator[Tx]:
        # BEGIN and COMMIT are sent as statements of the pipeline: psycopg's own transaction blocks
        # sync the pipeline on the way in and out, which is three round trips more.
        with self._lock:
            committed = False
            try:
                try:
                    with self._db.pipeline() as pipeline:
                        self._db.execute("BEGIN")
                        yield _PgTx(self._db, pipeline)
                        self._db.execute("COMMIT")
                    committed = True
                finally:
                    # A failure (a statement, or the body) leaves the transaction open or aborted: end it.
                    if self._db.info.transaction_status != self._psycopg.pq.TransactionStatus.IDLE:
                        self._db.execute("ROLLBACK")
                    if not committed:
                        self._forget_prepared()
            except self._psycopg.Error as exc:
                raise StateError(f"state store write failed: {exc}") from None

    def _forget_prepared(self) -> None:
        """After a failed pipeline: forget every server-side prepared statement.

        A pipeline aborted by a failed statement skips what was queued after it, the Parse of a statement
        due to be prepared included, yet psycopg counts that statement as prepared; its next use would fail
        with "prepared statement does not exist". Prepared statements save ~0.9 ms a write, so they stay on
        and are dropped on the (rare) failure: psycopg then sends DEALLOCATE ALL before the next statement.
        """
        prepared = getattr(self._db, "_prepared", None)
        if prepared is not None and callable(getattr(prepared, "clear", None)):
            prepared.clear()
        else:  # a psycopg without that cache: stop preparing rather than risk a broken statement
            self._db.prepare_threshold = None

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                return self._db.execute(_pg_sql(sql), tuple(params)).fetchall()  # type: ignore[no-any-return]
            except self._psycopg.Error as exc:
                raise StateError(f"state store read failed: {exc}") from None

    def ddl(self, script: str) -> list[str]:
        out = []
        for stmt in super().ddl(script):
            if stmt.upper().startswith("DROP INDEX"):
                continue
            for pattern, repl in _TYPES:
                stmt = pattern.sub(repl, stmt)
            out.append(stmt)
        return out

    def json_field(self, column: str, key: str) -> str:
        return f"({column})::jsonb ->> '{key}'"

    def close(self) -> None:
        with self._lock:
            self._db.close()
