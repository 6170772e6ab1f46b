"""The state store: receipts, pending actions, compensations, idempotency keys.

One SQLite file under the config's state directory, shared safely by `serve` and the
CLI (WAL, `BEGIN IMMEDIATE` for every append so the hash chain stays linear).
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from pydantic import BaseModel, ConfigDict

from safe_mcp.errors import StateError
from safe_mcp.state.db import Cursor, SqliteDb, StateDb, Tx
from safe_mcp.state.receipts import GENESIS, Receipt, canonical_json, new_id, receipt_hash, receipt_text_hash

__all__ = ["Count", "Intent", "PendingAction", "StateStore", "Usage", "UsageQuery", "VerifyReport"]

Count = tuple[str, str, str, int] | tuple[str, str, str, int, int]
"""A budget counter to bump with a receipt: (scope, target, kind, rows), or with a count n as the fifth item."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS receipts (
    seq INTEGER PRIMARY KEY,
    id TEXT UNIQUE NOT NULL,
    body TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS ledger_head (
    one INTEGER PRIMARY KEY CHECK (one = 1),
    seq INTEGER NOT NULL,
    hash TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS pending (
    id TEXT PRIMARY KEY,
    created REAL NOT NULL,
    not_before REAL NOT NULL,
    expires REAL NOT NULL,
    target TEXT NOT NULL,
    tool TEXT NOT NULL,
    call TEXT NOT NULL,
    effect TEXT NOT NULL,
    confirm_by TEXT NOT NULL,
    digest TEXT NOT NULL,
    preview TEXT NOT NULL,
    state TEXT NOT NULL,
    session TEXT NOT NULL,
    receipt_id TEXT NOT NULL,
    run_id TEXT,
    sealed INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS compensations (
    id TEXT PRIMARY KEY,
    receipt_id TEXT UNIQUE NOT NULL,
    target TEXT NOT NULL,
    tool TEXT NOT NULL,
    data TEXT NOT NULL,
    state TEXT NOT NULL,
    undone_by TEXT
);
CREATE TABLE IF NOT EXISTS idempotency (
    target TEXT NOT NULL,
    key TEXT NOT NULL,
    digest TEXT NOT NULL,
    state TEXT NOT NULL,
    receipt_id TEXT,
    result TEXT,
    owner TEXT,
    PRIMARY KEY (target, key)
);
-- Nothing queries receipts by session any more (budgets count events); an index kept current on
-- every append would be pure cost. Ledgers made by earlier versions drop it.
DROP INDEX IF EXISTS receipts_session;
-- Budgets and breaker counts: one row per scope, target, kind and time bucket (10 s, 10 min, or ever),
-- so checking a budget reads a handful of rows however many writes the window holds.
CREATE TABLE IF NOT EXISTS counters (
    scope TEXT NOT NULL,
    target TEXT NOT NULL,
    kind TEXT NOT NULL,
    width INTEGER NOT NULL,
    bucket INTEGER NOT NULL,
    n INTEGER NOT NULL,
    rows INTEGER NOT NULL,
    PRIMARY KEY (scope, target, kind, width, bucket)
);
-- An intent whose outcome is not yet recorded: written in the same transaction as its intent
-- receipt, deleted in the same transaction as its outcome receipt. What is left after a crash is
-- what `reconcile` settles from the target's own journal.
CREATE TABLE IF NOT EXISTS intents (
    id TEXT PRIMARY KEY,
    started REAL NOT NULL,
    owner TEXT NOT NULL,
    target TEXT NOT NULL,
    tool TEXT NOT NULL,
    idempotency_key TEXT,
    body TEXT NOT NULL,
    state TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS breakers (
    session TEXT NOT NULL,
    target TEXT NOT NULL,
    tripped_at REAL NOT NULL,
    reason TEXT NOT NULL,
    receipt_id TEXT,
    PRIMARY KEY (session, target)
);
"""


# Every optional field of a receipt, so that every stored body has the same keys.
_RECEIPT_DEFAULTS: dict[str, Any] = {
    name: f.default for name, f in Receipt.model_fields.items() if not f.is_required() and name != "hash"
}


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


class PendingAction(BaseModel):
    """A call that waits for confirmation; bound to `digest` (call + policy)."""

    model_config = ConfigDict(frozen=True)

    id: str
    created: float
    not_before: float
    expires: float
    target: str
    tool: str
    call: dict[str, Any]
    effect: str
    confirm_by: str
    digest: str
    preview: dict[str, Any]
    state: str
    session: str
    receipt_id: str
    run_id: str | None = None
    """The requester's run, so that the confirmed execution is undone with the run it belongs to."""
    sealed: bool = False
    """`call` holds the arguments as receipts record them: members that carry a secret (one the adapter
    marks, or a configured secret's value) are replaced. The call as sent is held only in the memory of the
    process that previewed it, and only that process can run it."""


class Intent(BaseModel):
    """What is needed to settle an intent after its process died: the call, who made it, and which
    pending action, idempotency key or compensation it holds."""

    model_config = ConfigDict(frozen=True)

    id: str = ""
    state: str = "open"
    owner: str
    target: str
    tool: str
    args: dict[str, Any]
    effect: str
    session: str
    client: str
    run_id: str | None = None
    action_id: str | None = None
    idempotency_key: str | None = None
    undoes: str | None = None
    """For an undo: the receipt being undone."""
    compensation_id: str | None = None
    counted: bool = False
    """The write was counted against its budgets with the intent (so that instances sharing the store
    see it while it runs): its outcome adds only the rows, or takes the count back when it did not run."""


class VerifyReport(BaseModel):
    model_config = ConfigDict(frozen=True)

    ok: bool
    count: int
    first_bad: str | None = None
    problem: str = ""


class StateStore:
    """All persistent state. Thread-safe; safe to share one file between processes."""

    def __init__(self, directory: Path | None = None, *, db: StateDb | None = None) -> None:
        """The state in `directory`/state.db (SQLite), or in `db` (see `open_state`).

        Raises:
            StateError: the store cannot be opened or its tables created.
        """
        if db is None:
            if directory is None:
                raise StateError("a state store needs a directory or a database")
            try:
                # Receipts, token hashes and undo records are nobody else's business: 0700, like ~/.ssh.
                directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            except OSError as exc:
                raise StateError(f"cannot open the state store in {directory}: {exc}") from None
            db = SqliteDb(directory / "state.db")
        self.db = db
        self.path = db.where
        with db.transaction() as tx:
            for stmt in db.ddl(_SCHEMA):
                tx.execute(stmt)
            # The chain head always exists, so that appending can lock it (PostgreSQL: FOR UPDATE).
            tx.execute("INSERT INTO ledger_head (one, seq, hash) VALUES (1, 0, ?) ON CONFLICT (one) DO NOTHING",
                       (GENESIS,))
            if db.dialect == "sqlite":
                columns = {r[1] for r in tx.execute("PRAGMA table_info(idempotency)").fetchall()}
                if "owner" not in columns:  # ledgers made before claims named their owner
                    tx.execute("ALTER TABLE idempotency ADD COLUMN owner TEXT")
                if "sealed" not in {r[1] for r in tx.execute("PRAGMA table_info(pending)").fetchall()}:
                    tx.execute("ALTER TABLE pending ADD COLUMN sealed INTEGER NOT NULL DEFAULT 0")
            elif not tx.execute("SELECT 1 FROM information_schema.columns WHERE table_schema = current_schema() "
                                "AND table_name = 'pending' AND column_name = 'sealed'").fetchall():
                # Stores made before pending actions could be sealed. Asked first: ALTER TABLE takes the table's
                # strongest lock even when the column exists, which would make every start wait for other
                # instances' transactions on it.
                tx.execute("ALTER TABLE pending ADD COLUMN IF NOT EXISTS sealed INTEGER NOT NULL DEFAULT 0")
        # Receipts of reads are group-committed: `append_later` queues them and a flusher thread
        # writes them in batches. Anything that reads or extends the ledger flushes first, so the
        # chain order is the order calls finished and no reader misses a receipt it was given.
        self._later: list[dict[str, Any]] = []
        self._later_lock = threading.Lock()
        # Held from taking queued receipts to committing them (a flush, or an append that takes them along): a
        # lookup's own flush waits for one in flight, so it never reads the ledger before receipts it was given.
        self._flush_lock = threading.Lock()
        self._wake = threading.Event()
        self._closing = False
        self._flusher: threading.Thread | None = None
        # Why the last flush of read receipts failed, until one succeeds: reads are refused meanwhile
        # (`check_ledger`), as writes are when their intent cannot be written.
        self._unwritten: str | None = None
        # PostgreSQL: the chain head as this store last committed it. An append without an admission
        # builds on it without reading the head first (one round trip, not two); the head row's
        # update checks it is still so, and when another instance moved it the append is done again
        # the locked way. Receipts are never built on a head that is not the chain's.
        self._head: tuple[int, str] | None = None

    def close(self) -> None:
        self._closing = True
        self._wake.set()
        if self._flusher is not None:
            self._flusher.join(5)
        try:
            self.flush()
        except StateError as exc:
            logging.getLogger("safe_mcp").error("%d read receipts could not be written: %s", len(self._later), exc)
        self.db.close()

    def check_ledger(self) -> None:
        """Refuse, before a read runs, while its receipt could not be written: the store is closed, or the
        last flush of read receipts failed (it is retried every ~50 ms, and reads resume once it succeeds).

        Raises:
            StateError: why receipts cannot be written now.
        """
        if self._closing:
            raise StateError("the state store is closed")
        why = self._unwritten
        if why is not None:
            raise StateError(f"receipts of earlier reads could not be written ({why}); "
                             f"{len(self._later)} are waiting")

    def append_later(self, **fields: Any) -> str:
        """Queue a receipt to be appended within ~50 ms; return its id now. For reads only: a write's
        receipts go through `append`, which fails loudly when the ledger cannot be written.

        Raises:
            StateError: the store is closed, so the receipt would never be written.
        """
        fields.setdefault("time", _now_iso())
        fields.setdefault("id", new_id("rcpt"))
        with self._later_lock:
            if self._closing:
                raise StateError("the state store is closed")
            self._later.append(fields)
            if self._flusher is None:
                self._flusher = threading.Thread(target=self._flush_loop, name="safe-mcp-receipts", daemon=True)
                self._flusher.start()
        return str(fields["id"])

    def _flush_loop(self) -> None:
        log = logging.getLogger("safe_mcp")
        while not self._closing:
            self._wake.wait(0.05)
            self._wake.clear()
            was = self._unwritten
            try:
                self.flush()
            except StateError as exc:
                if was is None:
                    log.error("could not write read receipts (%s); reads are refused until they are written, "
                              "retrying every 50 ms", exc)
            else:
                if was is not None:
                    log.warning("read receipts are written again; reads resume")

    def flush(self) -> None:
        """Write every queued receipt now, in one transaction; returns once every receipt queued before the
        call is in the ledger (also one another thread was writing at that moment)."""
        with self._flush_lock:
            with self._later_lock:
                batch, self._later = self._later, []
            if not batch:
                self._unwritten = None  # nothing waits: a write's append took the queue along with it
                return
            try:
                with self.transaction() as db:
                    linked = self._chain(db, batch, self._lock_head(db)())
            except StateError as exc:
                self._head = None
                with self._later_lock:
                    self._later[:0] = batch
                self._unwritten = str(exc) or type(exc).__name__
                raise
            self._head = (int(linked[-1][0]["seq"]), linked[-1][1])
            self._unwritten = None

    def transaction(self) -> AbstractContextManager[Tx]:
        """A write transaction on the state store, for modules that keep tables of their own here
        (approvals, tokens). Statements use `?` placeholders. Raises StateError when the database fails."""
        return cast(AbstractContextManager[Tx], self.db.transaction())

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Rows of one read on the state store. Raises StateError when the database fails."""
        return self.db.query(sql, params)

    def ddl(self, script: str) -> list[str]:
        """`script`'s statements adapted to the state database's dialect (for modules with tables here)."""
        return self.db.ddl(script)

    # receipts ---------------------------------------------------------------------------

    def append(self, *, compensation: tuple[str, str, dict[str, Any]] | None = None,
               intent: Intent | None = None, settles: str | None = None,
               settle_key: tuple[str, str, dict[str, Any] | None] | None = None,
               counts: list[Count] | None = None,
               admit: tuple[UsageQuery, Callable[[Usage], None]] | None = None, **fields: Any) -> Receipt:
        """Append one receipt to the chain and return it: one transaction, one conversation with the store.

        `compensation` (id, tool, data) is stored in the same transaction, so a receipt
        that names a compensation always has it. `intent` opens an intent record with this (intent)
        receipt; `settles` closes the intent record of that id with this (outcome) receipt: both in
        the same transaction, so an intent is open exactly while its outcome is unrecorded.
        `settle_key` (target, key, result) records this receipt as the result of an idempotency key,
        or releases the key when result is None, in the same transaction too: a key is never left
        `running` by a call whose outcome was recorded. `counts` (scope, target, kind, rows[, n]) are
        budget counters to bump with it. `admit` (query, judge): the usage is read after the chain head
        is locked, so every instance sharing the store judges in turn and sees the counts of the one
        before; when `judge` raises, nothing is written and its exception goes to the caller.

        Raises:
            StateError: the ledger could not be written; the caller must not go on.
        """
        fields.setdefault("time", _now_iso())
        fields.setdefault("id", new_id("rcpt"))
        # Read receipts still queued go into the same transaction, ahead of this one (chain order = order finished).
        with self._flush_lock:
            with self._later_lock:
                batch, self._later = self._later, []
            try:
                cached = self._head if admit is None and self.db.dialect == "postgres" else None
                if cached is not None:
                    try:
                        return self._append_tx([*batch, fields], compensation, intent, settles, settle_key, counts,
                                               None, cached)
                    except StateError:
                        self._head = None  # another instance appended since (or the append failed): again, locked
                return self._append_tx([*batch, fields], compensation, intent, settles, settle_key, counts, admit,
                                       None)
            except BaseException:
                with self._later_lock:
                    self._later[:0] = batch
                raise

    def _append_tx(self, batch: list[dict[str, Any]], compensation: tuple[str, str, dict[str, Any]] | None,
                   intent: Intent | None, settles: str | None,
                   settle_key: tuple[str, str, dict[str, Any] | None] | None, counts: list[Count] | None,
                   admit: tuple[UsageQuery, Callable[[Usage], None]] | None,
                   cached: tuple[int, str] | None) -> Receipt:
        try:
            with self.transaction() as db:
                head = self._lock_head(db) if cached is None else None
                if admit is not None:
                    query, judge = admit
                    judge(self._read_usage(db, query).result())
                linked = self._chain(db, batch, head() if head is not None else cached,
                                     expect=cached)
                receipt = self._append_in(db, linked[-1], compensation)
                if intent is not None:
                    db.execute("INSERT INTO intents VALUES (?, ?, ?, ?, ?, ?, ?, 'open')",
                               (receipt.id, time.time(), intent.owner, receipt.target, receipt.tool,
                                intent.idempotency_key, canonical_json(intent.model_dump(mode="json"))))
                if settles is not None:
                    db.execute("DELETE FROM intents WHERE id = ?", (settles,))
                if settle_key is not None:
                    _settle_key(db, *settle_key, receipt.id)
                if counts:
                    bump_all(db, [(scope, target, kind, rows, n[0] if n else 1) for scope, target, kind, rows, *n in counts])
        except BaseException:
            self._head = None
            raise
        self._head = (int(receipt.seq), str(receipt.hash))
        return receipt

    def admit(self, query: UsageQuery) -> Usage:
        """The breaker and budget counters `query` asks for, in one read."""
        if not query.windows and query.breaker is None:
            return _UsageRead([], query).result()
        return _UsageRead(self.db.query(*_usage_sql(query)), query).result()

    def _read_usage(self, db: Tx, query: UsageQuery) -> _UsageRead:
        if not query.windows and query.breaker is None:
            return _UsageRead([], query)
        return _UsageRead(db.execute(*_usage_sql(query)), query)

    def _append_in(
        self, db: Tx, linked: tuple[dict[str, Any], str], compensation: tuple[str, str, dict[str, Any]] | None
    ) -> Receipt:
        body, digest = linked
        receipt = Receipt.model_validate({**body, "hash": digest})
        if compensation is not None:
            cid, tool, data = compensation
            db.execute(
                "INSERT INTO compensations VALUES (?, ?, ?, ?, ?, 'available', NULL)",
                (cid, receipt.id, receipt.target, tool, canonical_json(data)),
            )
        return receipt

    def _lock_head(self, db: Tx) -> Callable[[], Any]:
        """Read the chain head, locked until the transaction ends; returns how to get its row. On PostgreSQL
        the row is only waited for when asked, so that the statements after it go out in the same round
        trip; on SQLite it is read out at once (a statement left unfinished would hold a read snapshot
        open on the connection, and a later write there would find the database locked)."""
        if self.db.dialect == "postgres":
            # FOR UPDATE makes instances sharing a PostgreSQL state take turns; SQLite's write lock does it there.
            cur = db.execute("SELECT seq, hash FROM ledger_head WHERE one = 1 FOR UPDATE")
            return lambda: next(iter(cur.fetchall()), None)
        row = next(iter(db.execute("SELECT seq, hash FROM ledger_head WHERE one = 1").fetchall()), None)
        return lambda: row

    def _chain(self, db: Tx, batch: list[dict[str, Any]], row: Any,
               expect: tuple[int, str] | None = None) -> list[tuple[dict[str, Any], str]]:
        """Link `batch` onto the ledger whose locked head is `row`, inside `db`'s transaction; return each
        stored body with its hash. With `expect` (PostgreSQL), `row` is the head as last seen and not
        locked: the transaction fails unless the head is still exactly that when it takes the row lock.

        Each body is serialised once: the hash covers exactly the text that is stored, which is what
        `verify` re-hashes.
        """
        seq, prev = (int(row[0]), str(row[1])) if row else (0, GENESIS)
        linked, rows = [], []
        for fields in batch:
            seq += 1
            body = {**_RECEIPT_DEFAULTS, **fields, "seq": seq, "prev": prev}
            text = canonical_json(body)
            prev = receipt_text_hash(text)
            linked.append((body, prev))
            rows.append((seq, body["id"], text, prev))
        if expect is not None:
            # The head row first (the same lock order as the locked path); a division by zero when it
            # had moved on aborts the whole transaction before any receipt is kept.
            db.execute("UPDATE ledger_head SET seq = ?, hash = ? WHERE one = 1 AND seq = ? AND hash = ?",
                       (seq, prev, *expect))
            db.execute("SELECT 1 / count(*) FROM ledger_head WHERE one = 1 AND seq = ? AND hash = ?", (seq, prev))
        db.executemany("INSERT INTO receipts (seq, id, body, hash) VALUES (?, ?, ?, ?)", rows)
        if expect is None:
            db.execute("INSERT INTO ledger_head (one, seq, hash) VALUES (1, ?, ?) "
                       "ON CONFLICT (one) DO UPDATE SET seq = excluded.seq, hash = excluded.hash", (seq, prev))
        return linked

    def receipt(self, receipt_id: str) -> Receipt | None:
        self.flush()
        rows = self.query("SELECT body, hash FROM receipts WHERE id = ?", (receipt_id,))
        return Receipt.model_validate({**json.loads(rows[0][0]), "hash": rows[0][1]}) if rows else None

    def receipts(self, limit: int = 50) -> list[Receipt]:
        """The newest `limit` receipts, oldest first."""
        self.flush()
        rows = self.query("SELECT body, hash FROM receipts ORDER BY seq DESC LIMIT ?", (limit,))
        return [Receipt.model_validate({**json.loads(b), "hash": h}) for b, h in reversed(rows)]

    def iter_receipts(self) -> Iterator[tuple[int, str, str, str]]:
        """(seq, id, stored body, stored hash) in ledger order, read in pages."""
        self.flush()
        last = 0
        while True:
            rows = self.query("SELECT seq, id, body, hash FROM receipts WHERE seq > ? ORDER BY seq LIMIT 1000", (last,))
            if not rows:
                return
            yield from rows
            last = rows[-1][0]

    def verify(self) -> VerifyReport:
        """Check every link of the chain; report the first receipt that does not hold."""
        prev, expected_seq, count = GENESIS, 1, 0
        for seq, rid, body_text, stored_hash in self.iter_receipts():
            count += 1
            try:
                body = json.loads(body_text)
            except ValueError:
                return VerifyReport(ok=False, count=count, first_bad=rid, problem="body is not valid JSON")
            if seq != expected_seq:
                return VerifyReport(
                    ok=False, count=count, first_bad=rid,
                    problem=f"receipt #{expected_seq} is missing before it (removed)",
                )
            if body.get("prev") != prev:
                return VerifyReport(ok=False, count=count, first_bad=rid, problem="prev does not match the receipt before")
            if body.get("seq") != seq or body.get("id") != rid:
                return VerifyReport(ok=False, count=count, first_bad=rid, problem="id or sequence was altered")
            actual = receipt_hash(body)
            if actual != stored_hash:
                return VerifyReport(ok=False, count=count, first_bad=rid, problem="contents do not match its hash (altered)")
            prev, expected_seq = stored_hash, seq + 1
        head = self.query("SELECT seq, hash FROM ledger_head WHERE one = 1")
        if head and (head[0][0] != expected_seq - 1 or head[0][1] != prev):
            return VerifyReport(
                ok=False, count=count, first_bad=f"#{expected_seq}",
                problem=f"the ledger ends at #{expected_seq - 1} but its head says #{head[0][0]} (receipts removed at the end)",
            )
        return VerifyReport(ok=True, count=count)

    def count_session_writes(self, session: str) -> int:
        """Writes this session executed, on any target (a counter, not a scan)."""
        count, _rows, _oldest = self.window(session, "*", "write", None)
        return count

    # budgets and the circuit breaker ----------------------------------------------------

    def record_event(self, session: str, target: str, kind: str, rows: int = 0, ts: float | None = None) -> None:
        """One thing that counts against a budget or the breaker: write, destructive, refusal, failure,
        near_limit, for a scope (`session`: a principal or a session id) and a target ("*" for any)."""
        with self.transaction() as db:
            bump(db, session, target, kind, rows, ts)

    def window(self, session: str, target: str, kind: str, since: float | None,
               now: float | None = None) -> tuple[int, int, float | None]:
        """(count, rows, start of the oldest counted bucket) of `kind` for a scope and target since `since`
        (None: ever). Counted in buckets, so the cost does not grow with the number of events; the
        window may reach back one bucket further than `since` (a budget errs on the strict side)."""
        usage = self.admit(UsageQuery(windows=((session, target, kind, since),), now=now))
        return usage.windows[0]

    def trip_breaker(self, session: str, target: str, reason: str, receipt_id: str | None) -> bool:
        """Trip the breaker for a session and target; False when it was already tripped."""
        with self.transaction() as db:
            cur = db.execute("INSERT INTO breakers VALUES (?, ?, ?, ?, ?) ON CONFLICT (session, target) DO NOTHING",
                             (session, target, time.time(), reason, receipt_id))
            return cur.rowcount == 1

    def breaker(self, session: str, target: str) -> tuple[float, str] | None:
        return self.admit(UsageQuery(breaker=(session, target))).breaker

    def breakers(self) -> list[tuple[str, str, float, str]]:
        return [(str(a), str(b), float(c), str(d))
                for a, b, c, d in self.query("SELECT session, target, tripped_at, reason FROM breakers ORDER BY tripped_at")]

    def reset_breakers(self, session: str | None, target: str | None) -> list[tuple[str, str]]:
        """Reset matching breakers (None matches any) and forget the trouble that tripped them."""
        with self.transaction() as db:
            found = db.execute("SELECT session, target FROM breakers WHERE (CAST(? AS TEXT) IS NULL OR session = ?) "
                               "AND (CAST(? AS TEXT) IS NULL OR target = ?)", (session, session, target, target)).fetchall()
            for s_, t_ in found:
                db.execute("DELETE FROM breakers WHERE session = ? AND target = ?", (s_, t_))
                db.execute("DELETE FROM counters WHERE scope = ? AND target = ? AND kind IN "
                           "('refusal', 'failure', 'near_limit')", (s_, t_))
        return [(str(a), str(b)) for a, b in found]

    # pending actions -------------------------------------------------------------------

    def add_pending(self, action: PendingAction) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT INTO pending VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    action.id, action.created, action.not_before, action.expires, action.target, action.tool,
                    canonical_json(action.call), action.effect, action.confirm_by, action.digest,
                    canonical_json(action.preview), action.state, action.session, action.receipt_id,
                    action.run_id, int(action.sealed),
                ),
            )

    def pending(self, action_id: str) -> PendingAction | None:
        rows = self.query("SELECT * FROM pending WHERE id = ?", (action_id,))
        return _pending_from_row(rows[0]) if rows else None

    def pending_list(self, state: str = "pending") -> list[PendingAction]:
        return [_pending_from_row(r) for r in self.query("SELECT * FROM pending WHERE state = ? ORDER BY created", (state,))]

    def transition_pending(self, action_id: str, from_state: str, to_state: str) -> bool:
        """Move an action between states atomically; False when another caller got there first."""
        with self.transaction() as db:
            cur = db.execute("UPDATE pending SET state = ? WHERE id = ? AND state = ?", (to_state, action_id, from_state))
            return cur.rowcount == 1

    # compensations ---------------------------------------------------------------------

    def compensation_for(self, receipt_id: str) -> tuple[str, str, dict[str, Any], str, str | None] | None:
        """(compensation id, target, data, state, undone_by) for the receipt that recorded it."""
        rows = self.query("SELECT id, target, data, state, undone_by FROM compensations WHERE receipt_id = ?", (receipt_id,))
        if not rows:
            return None
        cid, target, data, state, undone_by = rows[0]
        return cid, target, json.loads(data), state, undone_by

    def receipt_of_compensation(self, target: str, key: str, value: str) -> str | None:
        """The receipt whose compensation record holds `key` = `value` (links later work to its call)."""
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,63}", key):
            return None
        rows = self.query(f"SELECT receipt_id FROM compensations WHERE target = ? AND {self.db.json_field('data', key)} = ?",
                          (target, value))
        return str(rows[0][0]) if rows else None

    def transition_compensation(self, cid: str, from_state: str, to_state: str, undone_by: str | None = None) -> bool:
        with self.transaction() as db:
            cur = db.execute(
                "UPDATE compensations SET state = ?, undone_by = coalesce(?, undone_by) WHERE id = ? AND state = ?",
                (to_state, undone_by, cid, from_state),
            )
            return cur.rowcount == 1

    # idempotency -----------------------------------------------------------------------

    def claim_idempotency(self, target: str, key: str, digest: str,
                          owner: str = "") -> tuple[str, str | None, dict[str, Any] | None]:
        """Claim `key` for a call. Returns ("claimed", None, None) for a first use, else
        (state, receipt id, stored result) of the call that used it before. State "running" comes
        with the owner's instance id in place of the receipt id; "unknown" with the intent id."""
        with self.transaction() as db:
            # Insert first: of two instances claiming at once, exactly one inserts (the other waits, then sees it).
            # Both results are read after COMMIT, so that on PostgreSQL the claim is one round trip.
            inserted = db.execute("INSERT INTO idempotency (target, key, digest, state, receipt_id, result, owner) "
                                  "VALUES (?, ?, ?, 'running', NULL, NULL, ?) ON CONFLICT (target, key) DO NOTHING",
                                  (target, key, digest, owner))
            found = db.execute(
                "SELECT digest, state, receipt_id, result, owner FROM idempotency WHERE target = ? AND key = ?",
                (target, key),
            )
        rows = found.fetchall()
        if inserted.rowcount == 1:
            return "claimed", None, None
        row = rows[0]
        stored_digest, state, rid, result, claimed_by = row
        if stored_digest != digest:
            return "mismatch", rid, None
        if state == "running":
            return state, claimed_by or "", None
        return state, rid, (json.loads(result) if result else None)

    def mark_idempotency_unknown(self, target: str, key: str, intent_id: str) -> None:
        """The call holding `key` died and its target cannot say whether it ran: keep the key refused,
        naming the intent, until a human settles it with `safe-mcp reconcile`."""
        with self.transaction() as db:
            db.execute("UPDATE idempotency SET state = 'unknown', receipt_id = ? WHERE target = ? AND key = ?",
                       (intent_id, target, key))

    def release_dead_claim(self, target: str, key: str, owner: str) -> bool:
        """Release a `running` claim whose owner died before it wrote an intent (so nothing ran)."""
        with self.transaction() as db:
            open_intent = db.execute("SELECT 1 FROM intents WHERE target = ? AND idempotency_key = ?",
                                     (target, key)).fetchone()
            if open_intent:
                return False
            cur = db.execute("DELETE FROM idempotency WHERE target = ? AND key = ? AND state = 'running' "
                             "AND coalesce(owner, '') = ?", (target, key, owner))
            return cur.rowcount == 1

    # intents without an outcome -------------------------------------------------------------

    def open_intents(self, *, target: str | None = None, key: str | None = None) -> list[Intent]:
        """Intents whose outcome was never recorded, oldest first (optionally those holding one key)."""
        rows = self.query("SELECT id, state, body FROM intents WHERE (CAST(? AS TEXT) IS NULL OR target = ?) "
                          "AND (CAST(? AS TEXT) IS NULL OR idempotency_key = ?) ORDER BY started",
                          (target, target, key, key))
        return [Intent.model_validate({**json.loads(body), "id": iid, "state": st}) for iid, st, body in rows]

    def mark_intent_unknown(self, intent_id: str) -> bool:
        """False when it was already marked (so its `unknown` receipt is written once)."""
        with self.transaction() as db:
            return db.execute("UPDATE intents SET state = 'unknown' WHERE id = ? AND state = 'open'",
                              (intent_id,)).rowcount == 1

    def settle_idempotency(self, target: str, key: str, receipt_id: str | None, result: dict[str, Any] | None) -> None:
        """Record the result of a claimed key, or release the claim when `receipt_id` is None."""
        with self.transaction() as db:
            _settle_key(db, target, key, result if receipt_id else None, receipt_id or "")

    def running_claims(self) -> list[tuple[str, str, str]]:
        """(target, key, owner) of every claim still `running`."""
        return [(str(t), str(k), str(o or "")) for t, k, o in
                self.query("SELECT target, key, owner FROM idempotency WHERE state = 'running'")]


_BUCKETS = (10, 600)
"""Bucket widths in seconds: windows up to 10 minutes count 10 s buckets, longer ones 10 min buckets."""


def bump(db: Tx, scope: str, target: str, kind: str, rows: int = 0, ts: float | None = None, *, n: int = 1) -> None:
    """Count `n` events (1; 0 to add rows only; -1 to take back one counted ahead) with `rows` rows in every
    bucket width, and in the ever-total (width 0), inside `db`'s transaction."""
    bump_all(db, [(scope, target, kind, rows, n)], ts)


def bump_all(db: Tx, counts: list[tuple[str, str, str, int, int]], ts: float | None = None) -> None:
    """`bump` for several (scope, target, kind, rows, n) at once: one statement, however many counters.

    Repeats of one (scope, target, kind) are added up first: one upsert may not touch a row twice on PostgreSQL."""
    ts = ts if ts is not None else time.time()
    buckets = ((_BUCKETS[0], int(ts // _BUCKETS[0])), (_BUCKETS[1], int(ts // _BUCKETS[1])), (0, 0))
    merged: dict[tuple[str, str, str], list[int]] = {}
    for scope, target, kind, rows, n in counts:
        got = merged.setdefault((scope, target, kind), [0, 0])
        got[0] += n
        got[1] += rows
    values = [(scope, target, kind, width, bucket, n, rows)
              for (scope, target, kind), (n, rows) in merged.items() for width, bucket in buckets]
    db.execute("INSERT INTO counters VALUES " + ", ".join(["(?, ?, ?, ?, ?, ?, ?)"] * len(values))
               + " ON CONFLICT (scope, target, kind, width, bucket) "
               "DO UPDATE SET n = counters.n + excluded.n, rows = counters.rows + excluded.rows",
               [v for row in values for v in row])


def _window_buckets(since: float | None, now: float) -> tuple[int, int]:
    """(bucket width, first bucket) that cover `since`..`now` (width 0: ever)."""
    if since is None:
        return 0, 0
    width = _BUCKETS[0] if now - since <= 600 else _BUCKETS[1]
    return width, int(since // width)


def _usage_sql(query: UsageQuery) -> tuple[str, tuple[Any, ...]]:
    """One SELECT for every window and the breaker of `query`: a row per window (its index, count, rows,
    oldest bucket) and a row -1 (tripped at, reason) when the breaker is tripped."""
    parts: list[str] = []
    params: list[Any] = []
    now = query.now if query.now is not None else time.time()
    for i, (scope, target, kind, since) in enumerate(query.windows):
        width, first = _window_buckets(since, now)
        parts.append(f"SELECT {i}, coalesce(sum(n), 0), coalesce(sum(rows), 0), min(bucket), CAST(NULL AS TEXT) "
                     "FROM counters WHERE scope = ? AND target = ? AND kind = ? AND width = ? AND bucket >= ?")
        params += [scope, target, kind, width, first]
    if query.breaker is not None:
        parts.append("SELECT -1, tripped_at, 0, 0, reason FROM breakers WHERE session = ? AND target = ?")
        params += list(query.breaker)
    return " UNION ALL ".join(parts), tuple(params)


class UsageQuery(BaseModel):
    """What admitting a write reads: windows (scope, target, kind, since; None: ever) and a breaker
    (scope, target), as of `now` (None: the time of reading)."""

    model_config = ConfigDict(frozen=True)

    windows: tuple[tuple[str, str, str, float | None], ...] = ()
    breaker: tuple[str, str] | None = None
    now: float | None = None


class Usage(BaseModel):
    """The answer to a `UsageQuery`: per window (count, rows, start of the oldest counted bucket), and the
    breaker's (tripped at, reason) when tripped."""

    model_config = ConfigDict(frozen=True)

    windows: tuple[tuple[int, int, float | None], ...]
    breaker: tuple[float, str] | None = None


class _UsageRead:
    """The rows of a usage SELECT, made into a `Usage` when read (on PostgreSQL: after the round trip)."""

    def __init__(self, rows: Cursor | list[Any], query: UsageQuery) -> None:
        self._rows, self._query = rows, query

    def result(self) -> Usage:
        rows = self._rows if isinstance(self._rows, list) else self._rows.fetchall()
        now = self._query.now if self._query.now is not None else time.time()
        windows: list[tuple[int, int, float | None]] = [(0, 0, None)] * len(self._query.windows)
        breaker = None
        for index, a, b, c, reason in rows:
            if int(index) < 0:
                breaker = (float(a), str(reason))
                continue
            width = _window_buckets(self._query.windows[int(index)][3], now)[0]
            windows[int(index)] = (int(a), int(b), float(c) * width if c is not None and width else None)
        return Usage(windows=tuple(windows), breaker=breaker)


def _settle_key(db: Tx, target: str, key: str, result: dict[str, Any] | None, receipt_id: str) -> None:
    if result is None:
        db.execute("DELETE FROM idempotency WHERE target = ? AND key = ? AND state IN ('running', 'unknown')",
                   (target, key))
    else:
        db.execute("UPDATE idempotency SET state = 'done', receipt_id = ?, result = ? WHERE target = ? AND key = ?",
                   (receipt_id, canonical_json(result), target, key))


def _pending_from_row(row: tuple[Any, ...]) -> PendingAction:
    keys = [
        "id", "created", "not_before", "expires", "target", "tool", "call", "effect", "confirm_by",
        "digest", "preview", "state", "session", "receipt_id", "run_id", "sealed",
    ]
    d = dict(zip(keys, row, strict=True))
    d["call"], d["preview"], d["sealed"] = json.loads(d["call"]), json.loads(d["preview"]), bool(d["sealed"])
    return PendingAction.model_validate(d)


def monotonic_now() -> float:
    return time.time()
