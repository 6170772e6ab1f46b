"""kill -9 while a refund is in flight: safe-mcp never sends it again to find out, and the refund exists once.

A real `safe-mcp serve` over stdio, driven with raw JSON-RPC so the test controls when it dies.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
from apis import Payments
from http_support import billing
from support import RawStdio, ledger_rows, write_config

REFUND = {"name": "http_call", "arguments": {"target": "billing", "operation": "refund",
                                              "body": {"charge": "ch_1", "amount": 700}, "idempotency_key": "order-1"}}


@pytest.mark.parametrize("keyed", [True, False])
def test_a_refund_in_flight_when_the_server_dies_is_never_resent(tmp_path: Path, payments: Payments,
                                                                keyed: bool) -> None:
    payments.slow_first, payments.delay = True, 3.0
    cfg = write_config(tmp_path, billing(payments.url, timeout=10))
    refund = json.loads(json.dumps(REFUND))
    if not keyed:
        del refund["arguments"]["idempotency_key"]
    with tempfile.TemporaryFile() as log:
        first = RawStdio(cfg, log)
        first.start("tools/call", refund)
        deadline = time.monotonic() + 20
        while not payments.posts(r"^/v1/refunds$") and time.monotonic() < deadline:
            time.sleep(0.02)
        first.kill()  # the API has the refund; safe-mcp dies before its answer
        sent = payments.posts(r"^/v1/refunds$")[0].headers["idempotency-key"]

        second = RawStdio(cfg, log)  # reconciles at start: only the API could say, so it is unknown
        try:
            if keyed:
                answer = second.request("tools/call", refund)["result"]
                assert answer["isError"] and "cannot say whether it ran" in answer["content"][0]["text"]
        finally:
            second.close()
    assert len(payments.posts(r"^/v1/refunds$")) == 1 and len(payments.refunds) == 1, "nothing was sent again"
    assert sent == ("order-1" if keyed else _intent_id(tmp_path))
    reasons = [r["reason"] for r in _receipts(tmp_path) if r["outcome"] == "unknown"]
    assert len(reasons) == 1 and f"Idempotency-Key: {sent}" in reasons[0] and "'refund'" in reasons[0]

    listed = subprocess.run([sys.executable, "-m", "safe_mcp", "reconcile", "--config", str(cfg)],
                            capture_output=True, text=True, timeout=60)
    assert listed.returncode == 1 and "billing:http_call" in listed.stdout
    intent = _intent_id(tmp_path)
    settled = subprocess.run([sys.executable, "-m", "safe_mcp", "reconcile", intent, "--executed", "--as", "ops",
                              "--config", str(cfg)], capture_output=True, text=True, timeout=60)
    assert settled.returncode == 0, settled.stdout + settled.stderr
    if keyed:
        with tempfile.TemporaryFile() as log:
            third = RawStdio(cfg, log)
            try:
                again = third.request("tools/call", refund)["result"]
            finally:
                third.close()
        assert not again["isError"] and again["structuredContent"]["status"] == "duplicate"
    assert len(payments.posts(r"^/v1/refunds$")) == 1


def _receipts(tmp_path: Path) -> list[dict[str, Any]]:
    return [json.loads(str(b)) for (b,) in ledger_rows(tmp_path / "safe-mcp.toml", "SELECT body FROM receipts ORDER BY seq")]


def _intent_id(tmp_path: Path) -> str:
    ids = [r["id"] for r in _receipts(tmp_path) if r["outcome"] == "intent" and r["tool"] == "http_call"]
    assert len(ids) == 1
    return str(ids[0])
