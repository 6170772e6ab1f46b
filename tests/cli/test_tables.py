"""What an approver and an operator read: `pending`, `receipts list`, `check` as aligned tables."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pyotp
from helpers import run, shop

from safe_mcp.faces.cli_table import plural, table

LONG = ("CREATE VIEW paid_orders_of_some_customers AS SELECT * FROM orders WHERE status = 'paid' AND quantity > 0 "
        "AND customer_id IN (SELECT id FROM customers WHERE name LIKE '%a%' OR email LIKE '%example.com')")


def _pending(cfg: Path, *statements: str) -> list[str]:
    from safe_mcp.adapter import Call
    from safe_mcp.gate.pipeline import Caller
    from safe_mcp.gate.runtime import Runtime
    from safe_mcp.trust.config import load_config

    rt = Runtime(load_config(cfg))
    try:
        ids = []
        for sql in statements:
            r = rt.gate.run(Call(target="shop_admin", tool="sql_execute", args={"sql": sql}), Caller(session="t", client="t"))
            assert r.status == "pending", r
            ids.append(r.pending.action_id)
        return ids
    finally:
        rt.close()


def test_pending_is_a_table_with_iso_times_and_hides_expired(tmp_path: Path) -> None:
    cfg = shop(tmp_path)
    cfg.write_text(cfg.read_text().replace("ttl_s = 300", "ttl_s = 1"))
    old = _pending(cfg, "DELETE FROM orders")
    time.sleep(1.2)
    cfg.write_text(cfg.read_text().replace("ttl_s = 1", "ttl_s = 300"))
    live = _pending(cfg, "DELETE FROM orders", LONG)

    r = run("pending", "--config", str(cfg))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["action", "target", "effect", "needs", "created", "left", "would", "do"]
    assert old[0] not in r.stdout, "expired actions are hidden by default"
    assert "2 actions waiting; 1 expired and hidden (--all lists them)" in r.stdout
    row = next(x for x in lines if live[0] in x)
    assert "DELETE FROM orders (12 rows)" in row and "shop_admin" in row
    assert time.strftime("%Y-%m-%d", time.gmtime()) in row and "4m5" in row, "ISO time and time left"
    long_row = next(x for x in lines if live[1] in x)
    assert long_row.rstrip().endswith("rows)") and "..." in long_row, "one line, cut at a word"
    assert len(r.stdout.splitlines()) < 10, "three actions do not take 200 lines"
    assert "{" not in r.stdout, "no raw JSON on the approver's page"

    every = run("pending", "--all", "--config", str(cfg)).stdout
    assert old[0] in every and "expired" in next(x for x in every.splitlines() if old[0] in x)

    docs = json.loads(run("pending", "--json", "--all", "--config", str(cfg)).stdout)
    by_id = {d["id"]: d for d in docs}
    assert by_id[old[0]]["state"] == "expired" and by_id[old[0]]["seconds_left"] == 0
    assert by_id[live[0]]["state"] == "pending" and 250 < by_id[live[0]]["seconds_left"] <= 300
    assert by_id[live[0]]["expires"].endswith("Z") and "digest" not in by_id[live[0]]
    assert {d["id"] for d in json.loads(run("pending", "--json", "--config", str(cfg)).stdout)} == set(live)

    one = run("pending", live[0], "--config", str(cfg))
    assert one.returncode == 0 and "12 rows would change" in one.stdout and "sample:" in one.stdout
    assert run("pending", "act_nope", "--config", str(cfg)).returncode == 1


def test_no_pending_actions(tmp_path: Path) -> None:
    r = run("pending", "--config", str(shop(tmp_path)))
    assert r.returncode == 0 and r.stdout.strip() == "0 actions waiting"


def test_receipts_list_has_a_header_a_total_and_aligned_columns(tmp_path: Path) -> None:
    cfg = shop(tmp_path)
    _pending(cfg, "DELETE FROM orders", LONG)
    r = run("receipts", "list", "--limit", "1", "--config", str(cfg))
    assert r.returncode == 0
    lines = r.stdout.splitlines()
    assert lines[0].startswith("receipt ") and "outcome" in lines[0] and "reason" in lines[0]
    assert set(lines[1]) <= {"-", " "}
    assert lines[-1] == "1 receipt of 2 (the newest; --limit N shows more)"
    both = run("receipts", "list", "--config", str(cfg)).stdout.splitlines()
    assert both[-1] == "2 receipts of 2"
    col = both[0].index("outcome")
    assert all(x[col:].startswith("pending") for x in both[2:4]), "columns line up"


def test_check_aligns_long_keys() -> None:
    from safe_mcp.gate.inventory import _pairs

    out = _pairs([("read", "allowed"), ("statement_timeout_ms", "30000")], None)
    assert out == ["  read:                 allowed", "  statement_timeout_ms: 30000"]


def test_table_wraps_between_words_and_stays_plain_when_piped() -> None:
    rows = [["a", "the quick brown fox jumps over the lazy dog " * 3], ["b", "short"]]
    wrapped = table(["k", "text"], rows, width=40)
    assert all(len(x) <= 40 for x in wrapped.splitlines())
    def words(t: str) -> list[str]:
        return [w for w in t.split() if set(w) != {"-"}]

    assert words(wrapped) == words(table(["k", "text"], rows)), "the same words, none cut"
    assert len(table(["k", "text"], rows).splitlines()) == 4
    unbreakable = table(["k", "text"], [["a", "x" * 60]], width=40)
    assert "x" * 60 in unbreakable, "a word longer than the column overflows, it is never cut"
    assert [plural(n, "row") for n in (0, 1, 2)] == ["0 rows", "1 row", "2 rows"]


def test_pending_shows_who_approved_so_far(tmp_path: Path) -> None:
    env = {"PYTHON_KEYRING_BACKEND": "keyring.backends.fail.Keyring"}  # the key-file fallback, no OS keyring
    cfg = shop(tmp_path, "").resolve()
    cfg.write_text(cfg.read_text().replace("[confirm]", "[confirm]\napprovals_required = 2"))
    (action,) = _pending(cfg, "ALTER TABLE orders ADD COLUMN note TEXT")
    enrolled = run("approver", "add", "alice", "--config", str(cfg), env=env)
    assert enrolled.returncode == 0, enrolled.stderr
    secret = re.search(r"secret=([A-Z2-7]+)", enrolled.stdout).group(1)  # type: ignore[union-attr]
    before = next(x for x in run("pending", "--config", str(cfg)).stdout.splitlines() if action in x)
    assert "approved:" not in before and " human " in before
    ok = subprocess.run([sys.executable, "-m", "safe_mcp", "approve", action, "--as", "alice", "--config", str(cfg)],
                        input=pyotp.TOTP(secret).now() + "\n", capture_output=True, text=True, timeout=60,
                        env={**os.environ, **env})
    assert ok.returncode == 0, ok.stderr
    after = next(x for x in run("pending", "--config", str(cfg)).stdout.splitlines() if action in x)
    assert "human (approved: alice)" in after, after
