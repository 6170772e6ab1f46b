"""Receipts off the box: batches of the ledger, each with a signed chain head, in an S3 bucket with Object Lock.

A batch is one object, `PREFIX/batches/{first:012d}-{last:012d}.jsonl`: one line per receipt (seq, id, the stored
body text, its hash), then a `head` line: the last seq and hash, the hash before the first receipt, a digest of the
receipt lines, the time, and an Ed25519 signature by the gateway's key over the domain-separated canonical head.
Each object is written under COMPLIANCE retention, so nobody, root account included, can delete or overwrite it
before `retention_days`. What was shipped last (seq and hash) is kept in the state store; a ledger that no longer
continues it is not shipped over, and `safe_mcp.gate.ship_verify` names the first receipt that differs.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import os
import threading
import time
import uuid
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from safe_mcp.errors import StateError
from safe_mcp.gate.ship_wire import (
    ShipError,
    aws_error,
    aws_errors,
    batch_key,
    check_object_lock,
    gateway_key,
    head_bytes,
    key_id,
    raw_public,
    s3_client,
)
from safe_mcp.state.receipts import GENESIS, canonical_json

if TYPE_CHECKING:
    from safe_mcp.state.store import StateStore
    from safe_mcp.trust.config import Config, ShipSettings

__all__ = ["ShipError", "ShipReport", "Shipper", "check_shipping", "ship", "ship_gate_check", "ship_status"]

log = logging.getLogger("safe_mcp.ship")

_WRITE_EFFECTS = ("write", "destructive", "irreversible")
_LEASE_S = 60.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS receipts_shipped (
    one INTEGER PRIMARY KEY CHECK (one = 1),
    seq INTEGER NOT NULL,
    hash TEXT NOT NULL,
    shipped_at REAL,
    attempted_at REAL,
    error TEXT,
    lease_owner TEXT,
    lease_until REAL NOT NULL
);
"""


@dataclass
class ShipReport:
    batches: list[str] = field(default_factory=list)
    shipped: int = 0
    last_seq: int = 0


# --- the state store's record of what was shipped ------------------------------------------------


_ready: weakref.WeakSet[StateStore] = weakref.WeakSet()


def _ensure_table(store: StateStore) -> None:
    if store in _ready:
        return
    with store.transaction() as tx:
        for stmt in store.ddl(_SCHEMA):
            tx.execute(stmt)
        tx.execute("INSERT INTO receipts_shipped (one, seq, hash, lease_until) VALUES (1, 0, ?, 0) "
                   "ON CONFLICT (one) DO NOTHING", (GENESIS,))
    _ready.add(store)


def ship_status(store: StateStore) -> dict[str, Any]:
    """What the shipper last did: shipped seq, when, the last attempt and its error (None when it worked).

    Raises:
        StateError: the state store cannot be read.
    """
    _ensure_table(store)
    seq, digest, shipped_at, attempted_at, error = store.query(
        "SELECT seq, hash, shipped_at, attempted_at, error FROM receipts_shipped WHERE one = 1")[0]
    head = store.query("SELECT seq FROM ledger_head WHERE one = 1")
    local = int(head[0][0]) if head else 0
    return {"shipped_seq": int(seq), "shipped_hash": str(digest), "last_shipped_at": shipped_at,
            "last_attempt_at": attempted_at, "last_error": error, "unshipped": max(0, local - int(seq))}


def _claim(store: StateStore, owner: str) -> bool:
    """Take the shipping lease, so that instances sharing one state store never ship the same receipts twice."""
    now = time.time()
    with store.transaction() as tx:
        cur = tx.execute("UPDATE receipts_shipped SET lease_owner = ?, lease_until = ? "
                         "WHERE one = 1 AND (lease_until < ? OR lease_owner = ?)", (owner, now + _LEASE_S, now, owner))
        return bool(cur.rowcount)


def _release(store: StateStore, owner: str, error: str | None) -> None:
    with store.transaction() as tx:
        tx.execute("UPDATE receipts_shipped SET lease_owner = NULL, lease_until = 0, attempted_at = ?, error = ? "
                   "WHERE one = 1 AND lease_owner = ?", (time.time(), error, owner))


def _record_error(store: StateStore, error: str) -> None:
    with store.transaction() as tx:
        tx.execute("UPDATE receipts_shipped SET attempted_at = ?, error = ? WHERE one = 1", (time.time(), error))


# --- shipping -------------------------------------------------------------------------------------


def ship(store: StateStore, config: Config, *, owner: str | None = None, s3: Any = None) -> ShipReport:
    """Ship every receipt not yet shipped, in batches; return what was shipped. Records the outcome (and any
    error) in the state store for `check`, the approval page and `ship_gate_check`.

    Raises:
        ShipError: not configured, the bucket is unreachable or has no Object Lock, or the local ledger no
            longer continues what was shipped.
        StateError: the state store cannot be read or written.
    """
    settings = config.receipts.ship
    if settings is None:
        raise ShipError("receipts are not shipped: add a [receipts.ship] table (bucket, prefix, retention_days)")
    _ensure_table(store)
    owner = owner or f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    if not _claim(store, owner):
        return ShipReport(last_seq=int(store.query("SELECT seq FROM receipts_shipped WHERE one = 1")[0][0]))
    error: str | None = None
    try:
        return _ship_claimed(store, config, settings, s3, owner)
    except (ShipError, StateError) as exc:
        error = str(exc)
        raise
    finally:
        _release(store, owner, error)


def _ship_claimed(store: StateStore, config: Config, settings: ShipSettings, s3: Any, owner: str) -> ShipReport:
    s3 = s3 or s3_client(settings)
    check_object_lock(s3, settings)
    store.flush()
    seq, prev = store.query("SELECT seq, hash FROM receipts_shipped WHERE one = 1")[0]
    seq, prev = int(seq), str(prev)
    if seq == 0:
        try:
            found = s3.list_objects_v2(Bucket=settings.bucket, Prefix=f"{settings.prefix}batches/", MaxKeys=1)
        except aws_errors() as exc:
            raise aws_error("cannot list", settings, exc) from None
        if found.get("KeyCount", 0):
            raise ShipError(f"refusing to ship: s3://{settings.bucket}/{settings.prefix} already holds batches this "
                            "state store has not shipped: the ledger was deleted or restarted, or another gateway "
                            "ships there. Run `safe-mcp receipts verify --against "
                            f"s3://{settings.bucket}/{settings.prefix}`; a new ledger needs a new prefix")
    report = ShipReport(last_seq=seq)
    key = gateway_key(config.state_dir)
    public = raw_public(key)
    while True:
        rows = store.query("SELECT seq, id, body, hash FROM receipts WHERE seq > ? ORDER BY seq LIMIT ?",
                           (seq, settings.batch_max))
        if not rows:
            return report
        try:
            first_prev = json.loads(rows[0][2]).get("prev")
        except ValueError:
            first_prev = None  # not JSON: altered, and reported as not continuing
        if int(rows[0][0]) != seq + 1 or first_prev != prev:
            raise ShipError(f"refusing to ship: the local ledger does not continue what was shipped (receipt #{seq} "
                            f"was the last shipped, the next local receipt is #{rows[0][0]} {rows[0][1]}); the ledger "
                            "was truncated, rewritten or restarted: run `safe-mcp receipts verify --against "
                            f"s3://{settings.bucket}/{settings.prefix}`")
        lines = [canonical_json({"seq": int(s), "id": rid, "body": body, "hash": h}) for s, rid, body, h in rows]
        first, last = int(rows[0][0]), int(rows[-1][0])
        head: dict[str, Any] = {"v": 1, "first_seq": first, "seq": last, "hash": str(rows[-1][3]),
                "prev": prev, "lines_sha256": hashlib.sha256("\n".join(lines).encode()).hexdigest(),
                "time": datetime.now(UTC).isoformat(timespec="milliseconds"), "key_id": key_id(public)}
        record = {"head": head, "signature": base64.b64encode(key.sign(head_bytes(head))).decode(),
                  "public_key": base64.b64encode(public).decode()}
        name = batch_key(settings, first, last)
        body = ("\n".join([*lines, canonical_json(record)]) + "\n").encode()
        until = datetime.now(UTC) + timedelta(days=settings.retention_days)
        try:
            s3.put_object(Bucket=settings.bucket, Key=name, Body=body, ContentType="application/x-ndjson",
                          ContentMD5=base64.b64encode(hashlib.md5(body).digest()).decode(),  # noqa: S324 (S3 needs it)
                          ObjectLockMode="COMPLIANCE", ObjectLockRetainUntilDate=until)
        except aws_errors() as exc:
            raise aws_error(f"cannot write batch {name} to", settings, exc) from None
        seq, prev = last, str(rows[-1][3])
        with store.transaction() as tx:  # and renew the lease, for a long backlog
            tx.execute("UPDATE receipts_shipped SET seq = ?, hash = ?, shipped_at = ?, error = NULL, lease_until = ? "
                       "WHERE one = 1 AND lease_owner = ?", (seq, prev, time.time(), time.time() + _LEASE_S, owner))
        report.batches.append(name)
        report.shipped += len(rows)
        report.last_seq = seq
        log.info("shipped receipts #%d-#%d to s3://%s/%s", first, seq, settings.bucket, name)


# --- the write gate -------------------------------------------------------------------------------


def ship_gate_check(store: StateStore, settings: ShipSettings | None) -> str | None:
    """A refusal reason when `fail_writes_when_unshipped_s` is set and the oldest write receipt not yet shipped
    is older than that; else None. Fails closed: a state store that cannot be read is a reason too."""
    if settings is None or settings.fail_writes_when_unshipped_s is None:
        return None
    limit = settings.fail_writes_when_unshipped_s
    try:
        status = ship_status(store)
        after = status["shipped_seq"]
        like = " OR ".join("body LIKE ?" for _ in _WRITE_EFFECTS)
        while True:
            rows = store.query(f"SELECT seq, id, body FROM receipts WHERE seq > ? AND ({like}) ORDER BY seq LIMIT 20",
                               (after, *(f'%"effect":"{e}"%' for e in _WRITE_EFFECTS)))
            if not rows:
                return None
            for seq, rid, body in rows:
                fields = json.loads(body)
                if fields.get("effect") in _WRITE_EFFECTS:
                    age = time.time() - datetime.fromisoformat(fields["time"]).timestamp()
                    if age <= limit:
                        return None
                    why = f"; last shipping error: {status['last_error']}" if status["last_error"] else ""
                    return (f"receipts are not shipped off the box: write receipt {rid} (#{seq}) has waited {age:.0f} s, "
                            f"over fail_writes_when_unshipped_s = {limit} under [receipts.ship]{why}. Writes resume when "
                            "shipping catches up: fix it (safe-mcp check shows why) or run `safe-mcp receipts ship`")
                after = seq
    except (StateError, ValueError, KeyError) as exc:
        return f"cannot tell whether receipts are shipped ({exc}); writes are refused under fail_writes_when_unshipped_s"


# --- the background shipper -----------------------------------------------------------------------


class Shipper:
    """Ships every `interval_s` in a daemon thread. `last_error` and `last_shipped_at` are also kept in the
    state store, for `check` and the approval page."""

    def __init__(self, store: StateStore, config: Config) -> None:
        if config.receipts.ship is None:
            raise ShipError("receipts are not shipped: add a [receipts.ship] table")
        self.store, self.config, self.settings = store, config, config.receipts.ship
        self.owner = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.last_error: str | None = None
        self.last_shipped_at: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="safe-mcp-ship", daemon=True)
        self._thread.start()

    def stop(self, ship_last: bool = True) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
        if ship_last:
            self.run_once()

    def run_once(self) -> None:
        """One round; failures are logged and recorded, never raised (the gate goes on, unless fail-closed)."""
        try:
            report = ship(self.store, self.config, owner=self.owner)
        except (ShipError, StateError) as exc:
            if str(exc) != self.last_error:
                log.error("receipts could not be shipped: %s", exc)
            self.last_error = str(exc)
            if isinstance(exc, StateError):
                with contextlib.suppress(StateError):
                    _record_error(self.store, str(exc))
            return
        if self.last_error is not None:
            log.warning("receipts shipping works again (up to #%d)", report.last_seq)
        self.last_error = None
        if report.shipped:
            self.last_shipped_at = time.time()

    def _loop(self) -> None:
        while not self._stop.wait(self.settings.interval_s):
            self.run_once()


# --- check ----------------------------------------------------------------------------------------


def check_shipping(config: Config, open_store: Callable[[], StateStore], *, probe: bool) -> tuple[list[str], list[str]]:
    """(lines for `safe-mcp check`, problems): the background shipper's last outcome from the state store
    (`open_store` opens it; it is closed here) and, with `probe`, whether the bucket answers now with Object
    Lock enabled."""
    settings = config.receipts.ship
    if settings is None:
        return ["receipts shipping: off (receipts stay on this machine; see [receipts.ship])"], []
    where = f"s3://{settings.bucket}/{settings.prefix}"
    policy = (f"writes refused after {settings.fail_writes_when_unshipped_s} s unshipped"
              if settings.fail_writes_when_unshipped_s else "writes go on while unshipped")
    lines = [f"receipts shipping: {where} every {settings.interval_s:g} s, COMPLIANCE retention "
             f"{settings.retention_days} days; {policy}"]
    problems: list[str] = []
    try:
        store = open_store()
        try:
            status = ship_status(store)
        finally:
            store.close()
    except StateError as exc:
        return lines, [f"receipts shipping: cannot read its status from the state store: {exc}"]
    when = (datetime.fromtimestamp(status["last_shipped_at"], UTC).isoformat(timespec="seconds")
            if status["last_shipped_at"] else "never")
    lines.append(f"receipts shipped up to #{status['shipped_seq']} (last at {when}); {status['unshipped']} not yet shipped")
    if status["last_error"]:
        lines.append(f"receipts shipping FAILING: {status['last_error']}")
        problems.append(f"receipts shipping: {status['last_error']}")
    if probe:
        try:
            check_object_lock(s3_client(settings), settings)
        except ShipError as exc:
            if not status["last_error"]:
                lines.append(f"receipts shipping FAILING: {exc}")
            problems.append(f"receipts shipping: {exc}")
    return lines, problems
