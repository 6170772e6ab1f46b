"""A moto server (S3 with Object Lock over real HTTP on 127.0.0.1), a locked bucket, and a config shipping to it."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support import MOTO_KEY_ID, MOTO_SECRET, NO_AWS_FILES, environ, moto_server, write_config

KEY_ID, SECRET = MOTO_KEY_ID, MOTO_SECRET
REGION = "us-east-1"


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    with moto_server(KEY_ID, SECRET) as url:
        yield url


@pytest.fixture(scope="session", autouse=True)
def aws_env() -> Iterator[None]:
    """Credentials through the standard chain (environment), and no ~/.aws files from this machine."""
    with environ({"AWS_ACCESS_KEY_ID": KEY_ID, "AWS_SECRET_ACCESS_KEY": SECRET, **NO_AWS_FILES}):
        yield


@pytest.fixture
def s3(moto_endpoint: str) -> Iterator[Any]:
    """A plain boto3 client, for arranging and checking the bucket outside safe-mcp."""
    import boto3

    client = boto3.client("s3", region_name=REGION, endpoint_url=moto_endpoint)
    yield client
    client.close()


@pytest.fixture
def locked_bucket(s3: Any) -> str:
    name = f"audit-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(Bucket=name, ObjectLockEnabledForBucket=True)
    return name


@pytest.fixture
def ship_config(tmp_path: Path, moto_endpoint: str, locked_bucket: str) -> Callable[..., Path]:
    """A config with one SQLite target and `[receipts.ship]` on the locked bucket; keyword args override it."""
    db = tmp_path / "shop.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS items (id INTEGER PRIMARY KEY, name TEXT)")

    def make(state: str = 'path = "state"', **over: Any) -> Path:
        ship = {"bucket": locked_bucket, "prefix": "team-a/", "region": REGION, "endpoint_url": moto_endpoint,
                "retention_days": 30, "interval_s": 0.2, **over}
        lines = "\n".join(f"{k} = {v!r}".replace("'", '"') for k, v in ship.items() if v is not None)
        return write_config(tmp_path, """
            [targets.shop]
            kind = "sqlite"
            path = "shop.db"
            access = "read-write"

            [state]
            """ + state + """

            [receipts.ship]
        """ + lines + "\n")

    return make
