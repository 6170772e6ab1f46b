"""Issue 8's mixed run: SQLite rows, PostgreSQL rows, an S3 object and a held mail, undone as one run."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aws_support import ACCOUNT, REGION, unique
from support import HELD_MAIL_TARGET, call, connect, require_service, write_config

from safe_mcp.faces.demo import create_shop

pytestmark = pytest.mark.anyio

PG = "postgresql://postgres@127.0.0.1:5432"


@pytest.fixture
def pg_db() -> Iterator[str]:
    require_service("postgresql", "127.0.0.1", 5432)
    import psycopg

    db = f"safe_mcp_mixed_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(f"{PG}/test", autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{db}"')
    try:
        with psycopg.connect(f"{PG}/{db}", autocommit=True) as conn:
            conn.execute("CREATE TABLE accounts (id int PRIMARY KEY, balance int NOT NULL)")
            conn.execute("INSERT INTO accounts SELECT g, 100 FROM generate_series(1, 5) g")
        yield db
    finally:
        with psycopg.connect(f"{PG}/test", autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')


def balances(db: str) -> list[tuple[int, int]]:
    import psycopg

    with psycopg.connect(f"{PG}/{db}") as conn:
        return [(int(a), int(b)) for a, b in conn.execute("SELECT id, balance FROM accounts ORDER BY id").fetchall()]


async def test_undo_of_a_mixed_run_restores_everything_once(tmp_path: Path, moto_endpoint: str, pg_db: str,
                                                            boto: Callable[[str], Any]) -> None:
    create_shop(tmp_path / "shop.db")
    s3 = boto("s3")
    bucket = unique("mixed")
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="invoice.pdf", Body=b"%PDF-1.7 the original bytes")
    cfg = write_config(tmp_path, f"""
        [targets.shop]
        kind = "sqlite"
        path = "shop.db"
        access = "read-write"

        [targets.ledger]
        kind = "postgres"
        dsn = "{PG}/{pg_db}"
        access = "read-write"

        [targets.files]
        kind = "aws"
        region = "{REGION}"
        account = "{ACCOUNT}"
        endpoint_url = "{moto_endpoint}"
        access_key_id = "env:SAFE_MCP_TEST_AWS_KEY"
        secret_access_key = "env:SAFE_MCP_TEST_AWS_SECRET"
        access = "read-write"

        [confirm]
        min_delay_s = 0
        """ + HELD_MAIL_TARGET)
    run = {"run_id": "refund-batch-7"}
    async with connect(cfg, "stdio") as c:
        await call(c, "sql_execute", target="shop", sql="UPDATE orders SET status = 'refunded' WHERE id = 3", **run)
        await call(c, "sql_execute", target="ledger", sql="UPDATE accounts SET balance = balance - 30 WHERE id <= 2",
                   **run)
        deleting = await call(c, "aws_call", target="files", service="s3", operation="DeleteObject",
                              params={"Bucket": bucket, "Key": "invoice.pdf"}, **run)
        if deleting["status"] == "pending":
            await call(c, "confirm", action_id=deleting["pending"]["action_id"])
        await call(c, "email_send", target="mail", to=["ada@example.com"], subject="Refunded", body="Done.", **run)
        await call(c, "sql_execute", target="shop", sql="UPDATE orders SET status = 'other run' WHERE id = 4",
                   run_id="something-else")
    assert balances(pg_db)[:2] == [(1, 70), (2, 70)]
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket, Prefix="invoice.pdf")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "safe_mcp", *args, "--config", str(cfg)], capture_output=True,
                              text=True, timeout=120)

    undo = cli("undo", "--run", "refund-batch-7")
    assert undo.returncode == 0, undo.stdout + undo.stderr
    assert "undone: 4; not undone: 0" in undo.stdout
    db = sqlite3.connect(tmp_path / "shop.db")
    statuses = dict(db.execute("SELECT id, status FROM orders WHERE id IN (3, 4)").fetchall())
    db.close()
    assert statuses == {3: "paid", 4: "other run"}, "the run is undone, the other run is not touched"
    assert balances(pg_db)[:2] == [(1, 100), (2, 100)]
    assert s3.get_object(Bucket=bucket, Key="invoice.pdf")["Body"].read() == b"%PDF-1.7 the original bytes"
    async with connect(cfg, "memory") as c:
        outbox = await call(c, "email_outbox", target="mail")
        assert "cancelled" in json.dumps(outbox)
    again = cli("undo", "--run", "refund-batch-7")
    assert again.returncode == 0 and "undone: 0" in again.stdout
