"""Receipts off the box: shipped to a real S3 endpoint (moto's server) with Object Lock, then compared with the
local ledger after each way the ledger can be lost: deleted, truncated, rewritten, restarted."""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import stat
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from safe_mcp.faces.cli import main
from safe_mcp.gate.runtime import open_state
from safe_mcp.gate.ship import ShipError, Shipper, ship, ship_gate_check, ship_status
from safe_mcp.state.store import StateStore
from safe_mcp.trust.config import load_config


def _append(store: StateStore, n: int, effect: str = "write", **extra: Any) -> list[str]:
    ids = []
    for i in range(n):
        r = store.append(session="s", client="c", target="shop", tool="sql_execute", effect=effect,
                         args={"sql": f"INSERT INTO items VALUES ({i})"}, decision="allow", reason="test",
                         outcome="executed", policy_digest="d", **extra)
        ids.append(r.id)
    return ids


def _ledger(cfg: Path, n: int = 5) -> list[str]:
    store = open_state(load_config(cfg))
    try:
        return _append(store, n)
    finally:
        store.close()


def _url(cfg: Path) -> str:
    ship_ = load_config(cfg).receipts.ship
    assert ship_ is not None
    return f"s3://{ship_.bucket}/{ship_.prefix}"


def _verify(cfg: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["receipts", "verify", "--config", str(cfg), "--against", _url(cfg)])
    out = capsys.readouterr()
    return code, out.out + out.err


def _ship(cfg: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["receipts", "ship", "--config", str(cfg)])
    out = capsys.readouterr()
    return code, out.out + out.err


def test_ship_then_verify_ok_and_objects_are_locked(ship_config: Callable[..., Path], s3: Any, locked_bucket: str,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    cfg = ship_config()
    _ledger(cfg, 5)
    assert _ship(cfg, capsys) == (0, "shipped 5 receipts in 1 batches; shipped up to #5\n")
    more = _ledger(cfg, 3)
    code, out = _verify(cfg, capsys)
    assert code == 0, out
    assert "5 shipped receipts in 1 batches match" in out and "3 local receipts not shipped yet" in out
    assert _ship(cfg, capsys)[0] == 0
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=locked_bucket)["Contents"]]
    assert keys == ["team-a/batches/000000000001-000000000005.jsonl", "team-a/batches/000000000006-000000000008.jsonl"]
    # the batch holds the receipts verbatim and a signed head
    lines = s3.get_object(Bucket=locked_bucket, Key=keys[1])["Body"].read().decode().splitlines()
    assert [json.loads(x)["id"] for x in lines[:-1]] == more
    head = json.loads(lines[-1])
    assert head["head"]["seq"] == 8 and head["signature"] and head["public_key"]
    # COMPLIANCE retention on every object, about retention_days out
    for key in keys:
        meta = s3.head_object(Bucket=locked_bucket, Key=key)
        assert meta["ObjectLockMode"] == "COMPLIANCE"
        assert meta["ObjectLockRetainUntilDate"] > datetime.now(UTC) + timedelta(days=29)
    # the shipping key is the gateway's own, readable by its owner only
    assert stat.S_IMODE(os.stat(cfg.parent / "state" / "ship.key").st_mode) == 0o600
    assert _verify(cfg, capsys)[0] == 0


def test_locked_objects_cannot_be_deleted_or_overwritten(ship_config: Callable[..., Path], s3: Any,
                                                         locked_bucket: str, capsys: pytest.CaptureFixture[str]) -> None:
    """What moto enforces: deleting a locked version is refused; a plain delete only adds a delete marker and an
    overwrite only adds a version, so the shipped version stays readable, and verify reads the newest version:
    overwriting shows up as an altered batch."""
    from botocore.exceptions import ClientError

    cfg = ship_config()
    _ledger(cfg, 3)
    assert _ship(cfg, capsys)[0] == 0
    key = "team-a/batches/000000000001-000000000003.jsonl"
    version = s3.head_object(Bucket=locked_bucket, Key=key)["VersionId"]
    with pytest.raises(ClientError) as err:
        s3.delete_object(Bucket=locked_bucket, Key=key, VersionId=version)
    assert err.value.response["Error"]["Code"] == "AccessDenied"
    with pytest.raises(ClientError):
        s3.delete_object(Bucket=locked_bucket, Key=key, VersionId=version, BypassGovernanceRetention=True)
    original = s3.get_object(Bucket=locked_bucket, Key=key, VersionId=version)["Body"].read()
    s3.put_object(Bucket=locked_bucket, Key=key, Body=original.replace(b'"outcome\\":\\"executed', b'"outcome\\":\\"refused'))
    assert s3.get_object(Bucket=locked_bucket, Key=key, VersionId=version)["Body"].read() == original
    code, out = _verify(cfg, capsys)
    assert code == 1 and "MISMATCH at team-a/batches/000000000001-000000000003.jsonl" in out, out


def test_bucket_without_object_lock_is_refused(ship_config: Callable[..., Path], s3: Any,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    s3.create_bucket(Bucket="plain-bucket-no-lock")
    cfg = ship_config(bucket="plain-bucket-no-lock")
    _ledger(cfg, 2)
    code, out = _ship(cfg, capsys)
    assert code == 1 and "does not have Object Lock enabled" in out
    assert s3.list_objects_v2(Bucket="plain-bucket-no-lock").get("KeyCount") == 0


@pytest.mark.sqlite_state  # damages the SQLite ledger file itself
@pytest.mark.parametrize("damage", ["deleted", "truncated", "rewritten", "restarted", "removed-middle"])
def test_verify_against_names_the_first_bad_receipt(damage: str, ship_config: Callable[..., Path],
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    cfg = ship_config()
    ids = _ledger(cfg, 6)
    assert _ship(cfg, capsys)[0] == 0
    db = cfg.parent / "state" / "state.db"
    if damage == "deleted":
        for p in db.parent.glob("state.db*"):
            p.unlink()
        first_bad, why = ids[0], "missing from the local ledger"
    elif damage == "truncated":
        with sqlite3.connect(db) as conn:
            conn.execute("DELETE FROM receipts WHERE seq > 3")
            conn.execute("UPDATE ledger_head SET seq = 3, hash = (SELECT hash FROM receipts WHERE seq = 3)")
        first_bad, why = ids[3], "missing from the local ledger"
    elif damage == "removed-middle":
        with sqlite3.connect(db) as conn:
            conn.execute("DELETE FROM receipts WHERE seq = 2")
        first_bad, why = ids[1], "missing from the local ledger"
    elif damage == "rewritten":
        _rewrite_from(db, 4)  # consistently re-hashed from #4 on, so the local chain alone still verifies
        store = StateStore(db.parent)
        assert store.verify().ok
        store.close()
        first_bad, why = ids[3], "differs from the shipped one"
    else:
        for p in db.parent.glob("state.db*"):
            p.unlink()
        _ledger(cfg, 8)
        first_bad, why = ids[0], "starts another chain"
    code, out = _verify(cfg, capsys)
    assert code == 1, out
    assert f"MISMATCH at {first_bad}" in out and why in out, out


def _rewrite_from(db: Path, start: int) -> None:
    from safe_mcp.state.receipts import canonical_json, receipt_text_hash

    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT seq, body, hash FROM receipts ORDER BY seq").fetchall()
        prev = rows[start - 2][2]
        for seq, body, _ in rows[start - 1:]:
            fields = json.loads(body)
            fields["outcome"], fields["prev"] = "refused", prev
            text = canonical_json(fields)
            prev = receipt_text_hash(text)
            conn.execute("UPDATE receipts SET body = ?, hash = ? WHERE seq = ?", (text, prev, seq))
        conn.execute("UPDATE ledger_head SET hash = ?", (prev,))


@pytest.mark.sqlite_state  # damages the SQLite ledger file itself
def test_a_ledger_that_does_not_continue_the_shipped_one_is_not_shipped_over(
        ship_config: Callable[..., Path], s3: Any, locked_bucket: str, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = ship_config()
    _ledger(cfg, 3)
    assert _ship(cfg, capsys)[0] == 0
    _rewrite_from(cfg.parent / "state" / "state.db", 2)
    _ledger(cfg, 2)
    code, out = _ship(cfg, capsys)
    assert code == 1 and "does not continue what was shipped" in out, out
    assert len(s3.list_objects_v2(Bucket=locked_bucket)["Contents"]) == 1


def test_shipping_failure_is_visible_in_check_and_logs(ship_config: Callable[..., Path], tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str],
                                                       caplog: pytest.LogCaptureFixture) -> None:
    from support import free_port

    cfg = ship_config(endpoint_url=f"http://127.0.0.1:{free_port()}")  # nothing listens there
    config = load_config(cfg)
    store = open_state(load_config(cfg))
    try:
        _append(store, 2)
        shipper = Shipper(store, config)
        with caplog.at_level(logging.ERROR, logger="safe_mcp.ship"):
            shipper.run_once()
        assert shipper.last_error and "cannot" in shipper.last_error
        assert any("receipts could not be shipped" in r.getMessage() for r in caplog.records)
        assert os.environ["AWS_SECRET_ACCESS_KEY"] not in caplog.text
        status = ship_status(store)
        assert status["last_error"] == shipper.last_error and status["unshipped"] == 2
    finally:
        store.close()
    capsys.readouterr()
    code = main(["check", "--offline", "--config", str(cfg)])
    out = capsys.readouterr()
    assert "receipts shipping FAILING" in out.out + out.err, out
    assert code == 0  # --offline judges the config only
    assert main(["check", "--config", str(cfg)]) == 1


def test_background_shipper_ships_and_recovers(ship_config: Callable[..., Path], s3: Any, locked_bucket: str) -> None:
    cfg = ship_config()
    store = open_state(load_config(cfg))
    shipper = Shipper(store, load_config(cfg))
    try:
        shipper.start()
        _append(store, 4)
        import time

        deadline = time.monotonic() + 20
        while ship_status(store)["shipped_seq"] < 4 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert ship_status(store)["shipped_seq"] == 4 and shipper.last_error is None
        _append(store, 1)
    finally:
        shipper.stop()
        store.close()
    store = open_state(load_config(cfg))
    try:
        assert ship_status(store)["shipped_seq"] == 5  # stop ships what is left
    finally:
        store.close()


def test_fail_closed_refuses_writes_when_unshipped_too_long(ship_config: Callable[..., Path], s3: Any) -> None:
    from support import free_port

    down = ship_config(endpoint_url=f"http://127.0.0.1:{free_port()}", fail_writes_when_unshipped_s=30)
    settings = load_config(down).receipts.ship
    store = open_state(load_config(down))
    try:
        assert ship_gate_check(store, settings) is None  # nothing unshipped
        _append(store, 3, effect="read")
        old = (datetime.now(UTC) - timedelta(seconds=31)).isoformat()
        _append(store, 1, effect="read", time=old)
        assert ship_gate_check(store, settings) is None  # reads never block writes
        [stale] = _append(store, 1, effect="destructive", time=old)
        reason = ship_gate_check(store, settings)
        assert reason is not None and stale in reason and "fail_writes_when_unshipped_s = 30" in reason
        with pytest.raises(ShipError):
            ship(store, load_config(down))
        assert "last shipping error" in (ship_gate_check(store, settings) or "")
        # the default policy: writes go on
        assert ship_gate_check(store, load_config(ship_config()).receipts.ship) is None
        # shipping catches up: writes resume
        ship(store, load_config(ship_config(fail_writes_when_unshipped_s=30)))
        assert ship_gate_check(store, settings) is None
        _append(store, 1)
        assert ship_gate_check(store, settings) is None  # a write receipt not yet shipped, but young
    finally:
        store.close()


@pytest.mark.sqlite_state  # removes or edits the SQLite state behind safe-mcp's back
def test_a_restarted_ledger_is_not_shipped_over_the_old_one(ship_config: Callable[..., Path], s3: Any,
                                                            locked_bucket: str, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = ship_config()
    _ledger(cfg, 3)
    assert _ship(cfg, capsys)[0] == 0
    before = s3.list_object_versions(Bucket=locked_bucket)["Versions"]
    import shutil

    shutil.rmtree(cfg.parent / "state")  # the whole state directory, key and record of shipping included
    _ledger(cfg, 3)
    code, out = _ship(cfg, capsys)
    assert code == 1 and "already holds batches this state store has not shipped" in out, out
    assert s3.list_object_versions(Bucket=locked_bucket)["Versions"] == before
    code, out = _verify(cfg, capsys)
    assert code == 1 and "starts another chain" in out, out


@pytest.mark.sqlite_state  # removes or edits the SQLite state behind safe-mcp's back
def test_a_delete_marker_does_not_hide_a_shipped_batch(ship_config: Callable[..., Path], s3: Any,
                                                       locked_bucket: str, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = ship_config()
    ids = _ledger(cfg, 3)
    assert _ship(cfg, capsys)[0] == 0
    ids += _ledger(cfg, 2)
    assert _ship(cfg, capsys)[0] == 0
    # whoever truncates the ledger also "deletes" the newest batch: under Object Lock that only adds a marker
    s3.delete_object(Bucket=locked_bucket, Key="team-a/batches/000000000004-000000000005.jsonl")
    assert len(s3.list_objects_v2(Bucket=locked_bucket)["Contents"]) == 1
    with sqlite3.connect(cfg.parent / "state" / "state.db") as conn:
        conn.execute("DELETE FROM receipts WHERE seq > 3")
        conn.execute("UPDATE ledger_head SET seq = 3, hash = (SELECT hash FROM receipts WHERE seq = 3)")
    code, out = _verify(cfg, capsys)
    assert code == 1 and f"MISMATCH at {ids[3]}" in out, out


@pytest.mark.sqlite_state  # removes or edits the SQLite state behind safe-mcp's back
def test_a_batch_forged_without_the_gateways_key_is_named(ship_config: Callable[..., Path], s3: Any,
                                                          locked_bucket: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Someone who may write to the bucket but does not hold the gateway's key adds a batch that continues the
    chain (and the same receipts locally): its signature is valid, but under another key."""
    import base64
    import hashlib

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from safe_mcp.gate.ship_wire import head_bytes, key_id
    from safe_mcp.state.receipts import canonical_json

    cfg = ship_config()
    _ledger(cfg, 2)
    assert _ship(cfg, capsys)[0] == 0
    _ledger(cfg, 1)
    with sqlite3.connect(cfg.parent / "state" / "state.db") as conn:
        seq, rid, body, digest = conn.execute("SELECT seq, id, body, hash FROM receipts WHERE seq = 3").fetchone()
    lines = [canonical_json({"seq": seq, "id": rid, "body": body, "hash": digest})]
    forger = Ed25519PrivateKey.generate()
    public = forger.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    head = {"v": 1, "first_seq": 3, "seq": 3, "hash": digest, "prev": json.loads(body)["prev"],
            "lines_sha256": hashlib.sha256("\n".join(lines).encode()).hexdigest(), "time": "2026-01-01T00:00:00Z",
            "key_id": key_id(public)}
    record = {"head": head, "signature": base64.b64encode(forger.sign(head_bytes(head))).decode(),
              "public_key": base64.b64encode(public).decode()}
    s3.put_object(Bucket=locked_bucket, Key="team-a/batches/000000000003-000000000003.jsonl",
                  Body="\n".join([*lines, canonical_json(record)]) + "\n")
    code, out = _verify(cfg, capsys)
    assert code == 1 and "MISMATCH at team-a/batches/000000000003-000000000003.jsonl" in out, out
    assert f"signed by key {key_id(public)}" in out


def test_a_missing_profile_is_a_shipping_error_not_a_crash(ship_config: Callable[..., Path],
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    cfg = ship_config(profile="no-such-profile")
    _ledger(cfg, 1)
    code, out = _ship(cfg, capsys)
    assert code == 1 and "the AWS profile 'no-such-profile' does not exist" in out, out
    store = open_state(load_config(cfg))
    try:
        shipper = Shipper(store, load_config(cfg))
        shipper.run_once()
        assert shipper.last_error and "no-such-profile" in shipper.last_error
    finally:
        store.close()


def test_check_reports_healthy_shipping(ship_config: Callable[..., Path], capsys: pytest.CaptureFixture[str]) -> None:
    cfg = ship_config(fail_writes_when_unshipped_s=60)
    _ledger(cfg, 4)
    assert _ship(cfg, capsys)[0] == 0
    _ledger(cfg, 1)
    assert main(["check", "--config", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "COMPLIANCE retention 30 days; writes refused after 60 s unshipped" in out
    assert "receipts shipped up to #4" in out and "1 not yet shipped" in out and "FAILING" not in out


def test_verify_against_needs_an_s3_url(ship_config: Callable[..., Path], capsys: pytest.CaptureFixture[str]) -> None:
    cfg = ship_config()
    assert main(["receipts", "verify", "--config", str(cfg), "--against", "https://example.com/x"]) == 1
    assert "is not s3://BUCKET/PREFIX" in capsys.readouterr().err
