"""kill -9 while a refund is in flight: safe-mcp never sends it again to find out, and the refund exists once.

A real `safe-mcp serve` over stdio, driven with raw JSON-RPC so the test controls when it dies.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
from apis import Payments
from http_support import billing
from support import ledger_rows, serve_cmd, write_config


class Stdio:
    def __init__(self, config: Path, log: Any) -> None:
        self.proc = subprocess.Popen(serve_cmd(config), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                                     env=dict(os.environ))
        self.next_id = 0
        self.request("initialize", {"protocolVersion": "2025-11-25", "capabilities": {},
                                    "clientInfo": {"name": "crash", "version": "1"}})
        self.send({"jsonrpc": "2.0", "method": "notifications/initialized"})

    def send(self, msg: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(msg).encode() + b"\n")
        self.proc.stdin.flush()

    def start(self, method: str, params: dict[str, Any]) -> int:
        self.next_id += 1
        self.send({"jsonrpc": "2.0", "id": self.next_id, "method": method, "params": params})
        return self.next_id

    def request(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        rid = self.start(method, params)
        assert self.proc.stdout is not None
        while True:
            msg = json.loads(self.proc.stdout.readline())
            if msg.get("id") == rid:
                return dict(msg)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self._pipes()

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._pipes()

    def _pipes(self) -> None:
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None and not pipe.closed:
                with contextlib.suppress(BrokenPipeError):
                    pipe.close()


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
        first = Stdio(cfg, log)
        first.start("tools/call", refund)
        deadline = time.monotonic() + 20
        while not payments.posts(r"^/v1/refunds$") and time.monotonic() < deadline:
            time.sleep(0.02)
        first.kill()  # the API has the refund; safe-mcp dies before its answer
        sent = payments.posts(r"^/v1/refunds$")[0].headers["idempotency-key"]

        second = Stdio(cfg, log)  # reconciles at start: only the API could say, so it is unknown
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
            third = Stdio(cfg, log)
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
