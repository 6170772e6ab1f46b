"""`safe-mcp serve` ships in the background while it serves, and shows a shipping failure on the approval page."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx2
import pytest
from support import call, free_port, http_client, serving

from safe_mcp.faces.cli import main


def _objects(s3: Any, bucket: str) -> list[str]:
    return [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]


@pytest.mark.anyio
async def test_serve_ships_writes_in_the_background(ship_config: Callable[..., Path], s3: Any, locked_bucket: str,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    cfg = ship_config()
    with serving(cfg, "http") as port:
        async with http_client(f"http://127.0.0.1:{port}/mcp", cfg) as client:
            done = await call(client, "sql_execute", target="shop", sql="INSERT INTO items (name) VALUES ('a')")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            bodies = [s3.get_object(Bucket=locked_bucket, Key=k)["Body"].read() for k in _objects(s3, locked_bucket)]
            if any(done["receipt_id"].encode() in b for b in bodies):
                break
            time.sleep(0.2)
        else:
            pytest.fail("the write's receipt was not shipped while serving")
    capsys.readouterr()
    assert main(["receipts", "verify", "--config", str(cfg), "--against", f"s3://{locked_bucket}/team-a/"]) == 0
    assert "0 local receipts not shipped yet" in capsys.readouterr().out  # the last round ran at shutdown


def test_approval_page_shows_a_shipping_failure(ship_config: Callable[..., Path]) -> None:
    cfg = ship_config(endpoint_url=f"http://127.0.0.1:{free_port()}")  # nothing listens there
    with serving(cfg, "http") as port:
        deadline = time.monotonic() + 20
        page = ""
        while time.monotonic() < deadline and "not being shipped" not in page:
            page = httpx2.get(f"http://127.0.0.1:{port}/approvals").text
            time.sleep(0.3)
    assert 'id="shipping"' in page and "receipts are not being shipped off the box" in page, page[:2000]
    assert "cannot read the Object Lock configuration" in page
