"""Receipts: the append-only, hash-chained record of every call outcome."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from typing import Any

from pydantic import BaseModel, ConfigDict

__all__ = ["GENESIS", "Receipt", "canonical_json", "new_id", "receipt_hash", "receipt_text_hash"]

GENESIS = "0" * 64
_DOMAIN = b"safe-mcp/receipt/v1\x00"
_B32 = "0123456789abcdefghjkmnpqrstvwxyz"
_B32_PAIRS = [a + b for a in _B32 for b in _B32]
_PAIR_SHIFTS = range(115, 4, -10)


_last = [0]
_id_lock = threading.Lock()


def new_id(prefix: str) -> str:
    """A sortable, unguessable id: 48-bit milliseconds then 80 random bits (ULID layout).

    Monotonic within a process: ids made in the same millisecond sort in the order they were made.
    """
    with _id_lock:
        n = (int(time.time() * 1000) << 80) | int.from_bytes(os.urandom(10), "big")
        if n <= _last[0]:
            n = _last[0] + 1 + (int.from_bytes(os.urandom(4), "big") & 0xFFFF)
        _last[0] = n
    # 26 characters of 5 bits, most significant first: the top one, 12 pairs (one lookup per 10 bits), the last.
    return (f"{prefix}_{_B32[n >> 125]}{''.join([_B32_PAIRS[(n >> shift) & 1023] for shift in _PAIR_SHIFTS])}"
            f"{_B32[n & 31]}")


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


class Receipt(BaseModel):
    """One call outcome. `hash` covers every other field, `prev` links to the receipt before it."""

    model_config = ConfigDict(frozen=True)

    seq: int
    id: str
    time: str
    session: str
    client: str
    run_id: str | None = None
    target: str
    tool: str
    effect: str
    args: dict[str, Any]
    decision: str
    reason: str
    outcome: str
    affected: int | None = None
    compensation_id: str | None = None
    action_id: str | None = None
    refers_to: str | None = None
    idempotency_key: str | None = None
    policy_digest: str
    duration_ms: float | None = None
    prev: str
    hash: str

    def body(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude={"hash"})


def receipt_hash(body: dict[str, Any]) -> str:
    return receipt_text_hash(canonical_json(body))


def receipt_text_hash(text: str) -> str:
    """The hash of a receipt whose canonical JSON (without `hash`) is `text`."""
    return hashlib.sha256(_DOMAIN + text.encode()).hexdigest()
