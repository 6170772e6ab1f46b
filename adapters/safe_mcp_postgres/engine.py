"""Connections, the one-statement run, and the translation of driver errors.

Every statement an agent wrote is sent with the extended protocol (a pipeline always uses
it), which PostgreSQL refuses to run with more than one statement in it, whatever the
classifier said. Timeouts are connection settings fixed at connect time, so a statement
cannot change them (SET and set_config are refused anyway).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import RawCursor, errors
from psycopg.conninfo import conninfo_to_dict
from psycopg.types.string import TextLoader
from psycopg_pool import ConnectionPool, PoolTimeout

from safe_mcp.errors import AdapterError, TargetUnavailable

__all__ = ["Engine", "qi", "run_one", "translate"]


def qi(name: str) -> str:
    """Quote an identifier."""
    return '"' + name.replace('"', '""') + '"'


def where(dsn: str) -> str:
    """user@host:port/db of a DSN, for messages (never the password)."""
    try:
        d = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "(unparseable dsn)"
    return f"{d.get('user', '?')}@{d.get('host', 'localhost')}:{d.get('port', 5432)}/{d.get('dbname', '?')}"


def host_port(dsn: str) -> str:
    """HOST:PORT of a DSN, for "cannot reach" messages."""
    try:
        d = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "(unparseable dsn)"
    return f"{d.get('host') or 'localhost'}:{d.get('port') or 5432}"


class Engine:
    """One lazily opened connection pool for one target."""

    def __init__(self, target: str, dsn: str, password: str | None, *, options: dict[str, int], min_size: int,
                 max_size: int, connect_timeout_s: int) -> None:
        self.target = target
        self.dsn = dsn
        self.shown = where(dsn)
        self._password = password
        self._options = options
        self._sizes = (min_size, max_size)
        self._connect_timeout = connect_timeout_s
        self._pool: ConnectionPool[psycopg.Connection[Any]] | None = None
        self._lock = threading.Lock()

    def _kwargs(self) -> dict[str, Any]:
        opts = " ".join(f"-c {k}={v}" for k, v in self._options.items())
        # No automatic server-side prepared statements: the pool DISCARDs every session before reuse, and
        # psycopg's cache of what it prepared would then point at statements that no longer exist.
        kw: dict[str, Any] = {"autocommit": False, "cursor_factory": RawCursor, "options": opts, "prepare_threshold": None,
                              "application_name": f"safe-mcp/{self.target}", "connect_timeout": self._connect_timeout}
        if self._password is not None:
            kw["password"] = self._password
        return kw

    def pool(self) -> ConnectionPool[psycopg.Connection[Any]]:
        with self._lock:
            if self._pool is None:
                # One direct attempt first: a server that is down or refuses the login is reported as such at
                # once, instead of after the pool has waited out its timeout.
                failure = self._probe()
                if failure is not None:
                    raise failure
                pool: ConnectionPool[psycopg.Connection[Any]] = ConnectionPool(
                    self.dsn, kwargs=self._kwargs(), min_size=self._sizes[0], max_size=self._sizes[1], open=False,
                    configure=_configure, reset=_reset,
                    name=f"safe-mcp-{self.target}", timeout=self._connect_timeout)
                try:
                    pool.open(wait=True, timeout=self._connect_timeout)
                except PoolTimeout:
                    pool.close()
                    raise self._unreachable() from None
                self._pool = pool
            return self._pool

    def _probe(self) -> AdapterError | None:
        """None when a connection can be opened now; else why not (TargetUnavailable when down or refused)."""
        try:
            with psycopg.connect(self.dsn, **self._kwargs()):
                pass
        except psycopg.OperationalError as exc:
            return self.unavailable(exc)
        except psycopg.Error as exc:
            reason = _reason(self.scrub, exc)
            return AdapterError(f"cannot connect to target {self.target!r} ({self.shown}): {reason}")
        return None

    def _unreachable(self) -> AdapterError:
        """Why no connection could be had: the server refused or is down (TargetUnavailable), or the pool is busy."""
        failure = self._probe()
        if failure is not None:
            return failure
        return AdapterError(f"all {self._sizes[1]} connections to target {self.target!r} stayed busy for "
                            f"{self._connect_timeout}s; retry, or a human can raise pool_max_size")

    def unavailable(self, exc: psycopg.Error) -> TargetUnavailable:
        reason = _reason(self.scrub, exc)
        where_ = host_port(self.dsn)
        if "database" in reason and "does not exist" in reason:
            return TargetUnavailable(f"PostgreSQL at {where_} answered, but for target {self.target!r}: {reason}",
                                     "check the database name in dsn; nothing was run")
        if "password authentication" in reason or ("role" in reason and "does not exist" in reason):
            return TargetUnavailable(f"PostgreSQL at {where_} refused the login for target {self.target!r}: {reason}",
                                     "check the user in dsn and the password reference of the target; nothing was run")
        return TargetUnavailable(f"Cannot reach PostgreSQL at {where_} (target {self.target!r}): {reason}",
                                 f"check that PostgreSQL is running and reachable at {where_} (gave up after "
                                 f"connect_timeout_s = {self._connect_timeout}), then retry; nothing was run")

    def scrub(self, text: str) -> str:
        if self._password and len(self._password) >= 4:
            text = text.replace(self._password, "[redacted]")
        return text.replace(self.dsn, self.shown) if self.dsn else text

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection[Any]]:
        """A pooled connection, idle on entry and rolled back on exit unless the caller committed.

        Raises:
            AdapterError: no connection could be had.
        """
        pool = self.pool()
        try:
            ctx = pool.connection(timeout=self._connect_timeout)
            conn = ctx.__enter__()
        except PoolTimeout:
            raise self._unreachable() from None
        except psycopg.OperationalError as exc:
            raise self.unavailable(exc) from None
        try:
            yield conn
        except BaseException as exc:
            _quiet_rollback(conn)
            ctx.__exit__(type(exc), exc, exc.__traceback__)
            raise
        _quiet_rollback(conn)
        ctx.__exit__(None, None, None)

    def close(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.close()
                self._pool = None


# Types whose Python form JSON cannot carry exactly: loaded as PostgreSQL's own text.
TEXT_TYPES = ("numeric", "money", "timestamptz", "timestamp", "date", "time", "timetz", "interval", "uuid", "inet",
              "cidr", "macaddr", "macaddr8")
# Type oids whose values arrive as JSON-ready Python values (int, str, bool) or None.
PLAIN_OIDS = frozenset({16, 18, 19, 20, 21, 23, 25, 26, 1042, 1043, 790, 1114, 1184, 1082, 1083, 1266, 1186, 2950,
                        869, 650, 829, 774, 1700})


def _configure(conn: psycopg.Connection[Any]) -> None:
    for name in TEXT_TYPES:
        conn.adapters.register_loader(name, TextLoader)


def _reset(conn: psycopg.Connection[Any]) -> None:
    """Whatever a call left in the session goes before the connection is reused (defence in depth: the
    classifier refuses temporary objects, SET, PREPARE, cursors, LISTEN and advisory locks already).
    DISCARD ALL drops temporary objects, settings back to the connect-time options, prepared statements,
    cursors, LISTEN registrations and session advisory locks. Runs in the pool's worker, off the call path."""
    conn.autocommit = True
    try:
        conn.execute("DISCARD ALL", prepare=False)
    finally:
        conn.autocommit = False


def _quiet_rollback(conn: psycopg.Connection[Any]) -> None:
    if conn.closed or conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
        return
    try:
        conn.rollback()
    except psycopg.Error:
        conn.close()  # the pool discards it


def run_one(conn: psycopg.Connection[Any], sql: str, params: list[Any] | None) -> psycopg.Cursor[Any]:
    """Send one statement with the extended protocol (several statements are refused by the server)."""
    cur = conn.cursor()
    with conn.pipeline():
        cur.execute(sql, params)
    return cur


def translate(exc: psycopg.Error, engine: Engine, *, limits: dict[str, int],
              tables: Callable[[], list[str]] | None = None) -> AdapterError:
    """A message the agent can act on, for any psycopg error. Never contains the DSN or the password."""
    diag = getattr(exc, "diag", None)
    primary = (diag.message_primary if diag is not None else None) or str(exc).strip() or type(exc).__name__
    primary = engine.scrub(primary)
    target = engine.target
    if isinstance(exc, errors.QueryCanceled):
        ms = limits.get("statement_timeout", 0)
        return AdapterError(f"the statement ran longer than statement_timeout_ms = {ms} and was cancelled; narrow it "
                            f"(WHERE, LIMIT, an index) or a human can raise statement_timeout_ms under "
                            f"[targets.{target}]")
    if isinstance(exc, errors.LockNotAvailable):
        ms = limits.get("lock_timeout", 0)
        return AdapterError(f"a lock was not granted within lock_timeout_ms = {ms} (another session holds it); retry "
                            f"later, or a human can raise lock_timeout_ms under [targets.{target}]")
    if isinstance(exc, errors.IdleInTransactionSessionTimeout):
        return AdapterError("the session was idle in a transaction too long and was closed; retry")
    if isinstance(exc, errors.ReadOnlySqlTransaction):
        return AdapterError(f"this statement tried to write ({primary}); reads run in a READ ONLY transaction. "
                            "Use sql_execute on a read-write target for changes")
    if isinstance(exc, errors.UndefinedTable):
        known = tables() if tables is not None else []
        shown = ", ".join(known[:50]) + (" ..." if len(known) > 50 else "") if known else "none visible to this role"
        return AdapterError(f"{primary}; the tables are: {shown} (sql_schema describes them)")
    if isinstance(exc, errors.UndefinedColumn):
        return AdapterError(f"{primary}; sql_schema with table=NAME lists the columns")
    if isinstance(exc, errors.InsufficientPrivilege):
        return AdapterError(f"the database role of target {target!r} may not do this: {primary}; "
                            "ask a human to grant it, or do without")
    if isinstance(exc, errors.UniqueViolation | errors.ForeignKeyViolation | errors.NotNullViolation
                  | errors.CheckViolation):
        detail = engine.scrub(diag.message_detail) if diag is not None and diag.message_detail else ""
        return AdapterError(f"{primary}{': ' + detail if detail else ''}; nothing was changed")
    if isinstance(exc, errors.SyntaxError | errors.UndefinedFunction | errors.DatatypeMismatch
                  | errors.InvalidTextRepresentation | errors.UndefinedParameter | errors.AmbiguousColumn):
        hint = engine.scrub(diag.message_hint) if diag is not None and diag.message_hint else ""
        return AdapterError(f"postgres rejected the statement: {primary}{' (' + hint + ')' if hint else ''}")
    if (isinstance(exc, psycopg.OperationalError) and getattr(exc, "sqlstate", None) is None) or isinstance(
            exc, errors.AdminShutdown | errors.CrashShutdown | errors.CannotConnectNow):
        return engine.unavailable(exc)
    if isinstance(exc, psycopg.ProgrammingError) and "parameter" in primary.lower():
        return AdapterError(f"bad params: {primary}; pass a list with one value per $1, $2, ... placeholder")
    code = getattr(exc, "sqlstate", None)
    return AdapterError(f"postgres: {primary}" + (f" (sqlstate {code})" if code else ""))


def _reason(scrub: Any, exc: BaseException) -> str:
    """Every line of a driver error, joined: libpq puts the cause ("Connection refused") first and a
    tab-indented hint last; keeping only one of them hid the cause."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return str(scrub("; ".join(lines))) if lines else type(exc).__name__
