"""The outbox: one SQLite file per mail target, under safe-mcp's state directory.

States: held -> sending -> sent | failed | unknown; held -> cancelled. `held` also covers a message
waiting to retry after a failed attempt (it has not left, so it can still be cancelled).

Exactly once: a message moves from held to sending in one `BEGIN IMMEDIATE` transaction (the claim),
so two senders, or a sender and a cancel, can never both win. A message found in `sending` whose
sender is gone is *not* re-sent: its attempt may have reached the server before the process died,
and a duplicate email cannot be taken back, while a missing one can be re-sent deliberately. It is
marked `unknown` and reported; a human checks the server's log and re-sends if it did not leave.

Journal: the row that queues a message carries the gate's intent id (and the idempotency key), written
in the same transaction, so after a crash `by_intent` says whether that send was queued; a cancel
records its own intent id the same way.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import threading
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safe_mcp.errors import AdapterError, TargetUnavailable
from safe_mcp.sqlitetx import immediate
from safe_mcp.state.receipts import new_id

__all__ = ["Outbox", "Queued", "RateLimited", "Row"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id TEXT PRIMARY KEY,
    created REAL NOT NULL,
    due REAL NOT NULL,
    next_attempt REAL NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    digest TEXT NOT NULL,
    summary TEXT NOT NULL,
    envelope_from TEXT NOT NULL,
    envelope_to TEXT NOT NULL,
    raw BLOB NOT NULL,
    message_id TEXT NOT NULL,
    claimed_by TEXT,
    claimed_at REAL,
    finished REAL,
    reply TEXT,
    provider_id TEXT,
    last_error TEXT
);
CREATE INDEX IF NOT EXISTS messages_state_due ON messages (state, next_attempt);
CREATE INDEX IF NOT EXISTS messages_created ON messages (created);
"""
# Added after the first release: an older outbox file gets them on open.
_JOURNAL = {"intent_id": "TEXT", "idem_key": "TEXT", "cancel_intent": "TEXT"}
_JOURNAL_INDEXES = """
CREATE INDEX IF NOT EXISTS messages_intent ON messages (intent_id);
CREATE INDEX IF NOT EXISTS messages_cancel_intent ON messages (cancel_intent);
CREATE INDEX IF NOT EXISTS messages_idem_key ON messages (idem_key);
"""
_COLUMNS = ("id, created, due, next_attempt, state, attempts, digest, summary, envelope_from, envelope_to, "
            "message_id, claimed_by, claimed_at, finished, reply, provider_id, last_error, intent_id, idem_key, "
            "cancel_intent")


class RateLimited(AdapterError):
    """messages_per_hour is used up; nothing was queued."""


@dataclass(frozen=True)
class Row:
    id: str
    created: float
    due: float
    next_attempt: float
    state: str
    attempts: int
    digest: str
    summary: dict[str, Any]
    envelope_from: str
    envelope_to: list[str]
    message_id: str
    claimed_by: str | None
    claimed_at: float | None
    finished: float | None
    reply: str | None
    provider_id: str | None
    last_error: str | None
    intent_id: str | None = None
    idem_key: str | None = None
    cancel_intent: str | None = None

    @property
    def held_s(self) -> float:
        """The hold it was queued with (0: it was to leave at once, so it was never cancellable)."""
        return max(0.0, self.due - self.created)

    def view(self) -> dict[str, Any]:
        """What the agent and the CLI see of a message (no body)."""
        status = self.state
        if self.state == "held" and self.attempts:
            status = "waiting to retry"
        return {
            "id": self.id, "state": self.state, "status": status, "message_id": self.message_id,
            "queued_at": _iso(self.created), "leaves_at": _iso(max(self.due, self.next_attempt))
            if self.state == "held" else None,
            "finished_at": _iso(self.finished) if self.finished else None, "attempts": self.attempts,
            "reply": self.reply, "provider_message_id": self.provider_id, "last_error": self.last_error,
            **{k: self.summary.get(k) for k in ("from", "to", "cc", "bcc", "reply_to", "subject", "recipients")},
        }


@dataclass(frozen=True)
class Queued:
    row: Row
    duplicate_of: Row | None = None


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def _row(r: tuple[Any, ...]) -> Row:
    (id_, created, due, next_attempt, state, attempts, digest, summary, env_from, env_to, message_id,
     claimed_by, claimed_at, finished, reply, provider_id, last_error, intent_id, idem_key, cancel_intent) = r
    return Row(id_, created, due, next_attempt, state, attempts, digest, json.loads(summary), env_from,
               json.loads(env_to), message_id, claimed_by, claimed_at, finished, reply, provider_id, last_error,
               intent_id, idem_key, cancel_intent)


class Outbox:
    """Thread-safe; safe to share between processes (the CLI cancels while `serve` sends)."""

    def __init__(self, path: Path) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(_SCHEMA)
            have = {r[1] for r in self._db.execute("PRAGMA table_info(messages)")}
            for column, kind in _JOURNAL.items():
                if column not in have:
                    self._db.execute(f"ALTER TABLE messages ADD COLUMN {column} {kind}")
            self._db.executescript(_JOURNAL_INDEXES)
        except (OSError, sqlite3.Error) as exc:
            raise TargetUnavailable(f"cannot open the outbox {path.name}: {exc}",
                                    f"check that {path.parent} is writable and no other program holds {path.name}, "
                                    "then retry; nothing was queued") from None
        self._lock = threading.Lock()
        # Who claims: host and pid (to spot a dead sender at once) and a token for this instance.
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{new_id('snd')}"

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _tx(self) -> AbstractContextManager[sqlite3.Connection]:
        return immediate(self._db, self._lock, lambda exc: TargetUnavailable(
            f"the outbox could not be written: {exc}", "retry; if it persists, check the state directory's disk and "
            "whether another process holds the outbox locked; nothing was changed"))

    def _select(self, where: str, params: tuple[Any, ...]) -> list[Row]:
        with self._lock:
            try:
                return [_row(r) for r in self._db.execute(f"SELECT {_COLUMNS} FROM messages WHERE {where}", params)]
            except sqlite3.Error as exc:
                raise TargetUnavailable(f"the outbox could not be read: {exc}",
                                        "retry; if it persists, check the state directory") from None

    # ------------------------------------------------------------------ queueing

    def enqueue(self, *, summary: dict[str, Any], digest: str, envelope_from: str, envelope_to: list[str], raw: bytes,
                message_id: str, hold_s: float, per_hour: int, duplicate_window_s: float | None,
                intent_id: str | None = None, idem_key: str | None = None) -> Queued:
        """Queue one message, atomically with the rate check, the duplicate checks and its journal entry.

        `idem_key`: a message already queued with this key is returned as `duplicate_of` (in any state:
        a key sends at most once, whatever became of the first message). `duplicate_window_s` None skips
        the likely-duplicate check by digest (the caller gave an idempotency key). `intent_id` is written
        in the same row, so `by_intent` can later tell whether this call queued anything.

        Raises:
            RateLimited: `per_hour` messages were queued in the last hour; nothing was queued.
            AdapterError: `idem_key` was used before for a different message; nothing was queued.
            TargetUnavailable: the outbox could not be written.
        """
        now = time.time()
        with self._tx() as db:
            if idem_key is not None:
                same = db.execute(f"SELECT {_COLUMNS} FROM messages WHERE idem_key = ? ORDER BY created LIMIT 1",
                                  (idem_key,)).fetchone()
                if same is not None:
                    first = _row(same)
                    if first.digest != digest:
                        raise AdapterError(f"idempotency_key {idem_key!r} already queued a different message "
                                           f"({first.id}); use a new key for a new message")
                    return Queued(row=first, duplicate_of=first)
            n = db.execute("SELECT count(*) FROM messages WHERE created > ? AND state != 'cancelled'",
                           (now - 3600,)).fetchone()[0]
            if n >= per_hour:
                oldest = db.execute("SELECT min(created) FROM messages WHERE created > ? AND state != 'cancelled'",
                                    (now - 3600,)).fetchone()[0]
                raise RateLimited(f"rate limit: {n} messages were queued in the last hour (messages_per_hour = "
                                  f"{per_hour}); the next one can be queued after {_iso(oldest + 3600)}")
            if duplicate_window_s is not None:
                dup = db.execute(f"SELECT {_COLUMNS} FROM messages WHERE digest = ? AND created >= ? AND state IN "
                                 "('held', 'sending', 'sent', 'unknown') ORDER BY created DESC LIMIT 1",
                                 (digest, now - duplicate_window_s)).fetchone()
                if dup is not None:
                    return Queued(row=_row(dup), duplicate_of=_row(dup))
            mid = new_id("msg")
            db.execute(
                "INSERT INTO messages (id, created, due, next_attempt, state, digest, summary, envelope_from, envelope_to, "
                "raw, message_id, intent_id, idem_key) VALUES (?, ?, ?, ?, 'held', ?, ?, ?, ?, ?, ?, ?, ?)",
                (mid, now, now + hold_s, now + hold_s, digest, json.dumps(summary), envelope_from,
                 json.dumps(envelope_to), raw, message_id, intent_id, idem_key),
            )
        row = self.get(mid)
        assert row is not None
        return Queued(row=row)

    def cancel(self, mid: str, intent_id: str | None = None) -> tuple[bool, Row | None]:
        """Cancel a held message, journaling `intent_id` in the same transaction.
        (True, row) when cancelled; (False, row) when it was not held."""
        with self._tx() as db:
            cur = db.execute("UPDATE messages SET state = 'cancelled', finished = ?, cancel_intent = ? "
                             "WHERE id = ? AND state = 'held'", (time.time(), intent_id, mid))
            done = cur.rowcount == 1
        return done, self.get(mid)

    # ------------------------------------------------------------------ sending

    def claim_due(self) -> tuple[Row, bytes] | None:
        """Take the oldest due message for sending; nobody else can take it after this returns."""
        now = time.time()
        with self._tx() as db:
            found = db.execute("SELECT id, raw FROM messages WHERE state = 'held' AND due <= ? AND next_attempt <= ? "
                               "ORDER BY next_attempt, created LIMIT 1", (now, now)).fetchone()
            if found is None:
                return None
            db.execute("UPDATE messages SET state = 'sending', claimed_by = ?, claimed_at = ?, attempts = attempts + 1 "
                       "WHERE id = ? AND state = 'held'", (self.owner, now, found[0]))
        row = self.get(found[0])
        assert row is not None
        return row, bytes(found[1])

    def mark_sent(self, mid: str, reply: str, provider_id: str | None) -> None:
        self._finish(mid, "sent", reply=reply, provider_id=provider_id)

    def mark_failed(self, mid: str, error: str) -> None:
        self._finish(mid, "failed", last_error=error)

    def mark_unknown(self, mid: str, error: str) -> None:
        self._finish(mid, "unknown", last_error=error)

    def retry_later(self, mid: str, error: str, at: float) -> None:
        with self._tx() as db:
            db.execute("UPDATE messages SET state = 'held', next_attempt = ?, last_error = ?, claimed_by = NULL "
                       "WHERE id = ? AND state = 'sending' AND claimed_by = ?", (at, error, mid, self.owner))

    def _finish(self, mid: str, state: str, **cols: Any) -> None:
        sets = ", ".join(f"{k} = ?" for k in cols)
        with self._tx() as db:
            db.execute(f"UPDATE messages SET state = ?, finished = ?{', ' + sets if sets else ''} "
                       "WHERE id = ? AND state = 'sending' AND claimed_by = ?",
                       (state, time.time(), *cols.values(), mid, self.owner))

    def orphans(self, lease_s: float) -> list[Row]:
        """Messages left in `sending` by a sender that is gone: a dead process on this host, or a claim
        older than `lease_s` (no attempt lasts that long)."""
        now = time.time()
        host = socket.gethostname()
        out = []
        for row in self._select("state = 'sending' AND (claimed_by IS NULL OR claimed_by != ?)", (self.owner,)):
            owner_host, _, rest = (row.claimed_by or "").partition(":")
            pid = int(rest.partition(":")[0]) if rest.partition(":")[0].isdigit() else 0
            dead = owner_host == host and pid > 0 and not _alive(pid)
            if dead or now - (row.claimed_at or 0) > lease_s:
                out.append(row)
        return out

    def settle_orphan(self, mid: str, error: str) -> bool:
        with self._tx() as db:
            cur = db.execute("UPDATE messages SET state = 'unknown', finished = ?, last_error = ? "
                             "WHERE id = ? AND state = 'sending' AND claimed_by IS NOT ?",
                             (time.time(), error, mid, self.owner))
            return cur.rowcount == 1

    # ------------------------------------------------------------------ reading

    def get(self, mid: str) -> Row | None:
        rows = self._select("id = ?", (mid,))
        return rows[0] if rows else None

    def by_intent(self, intent_id: str) -> tuple[str, Row] | None:
        """("queued", row) when the intent queued `row`, ("cancelled", row) when it cancelled it, else None."""
        rows = self._select("intent_id = ? OR cancel_intent = ? LIMIT 1", (intent_id, intent_id))
        if not rows:
            return None
        return ("queued" if rows[0].intent_id == intent_id else "cancelled"), rows[0]

    def latest(self, limit: int = 50) -> list[Row]:
        return self._select("1 ORDER BY created DESC LIMIT ?", (limit,))

    def counts(self) -> dict[str, int]:
        return {str(state): int(n) for state, n in self._rows("SELECT state, count(*) FROM messages GROUP BY state", ())}

    def queued_last_hour(self) -> int:
        return int(self._rows("SELECT count(*) FROM messages WHERE created > ? AND state != 'cancelled'",
                              (time.time() - 3600,))[0][0])

    def _rows(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                return list(self._db.execute(sql, params).fetchall())
            except sqlite3.Error as exc:
                raise TargetUnavailable(f"the outbox could not be read: {exc}",
                                        "retry; if it persists, check the state directory") from None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
