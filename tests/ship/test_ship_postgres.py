"""Shipping from a PostgreSQL state store that several instances share: one ships at a time, nothing twice."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support import fresh_database

from safe_mcp.faces.cli import main
from safe_mcp.gate.runtime import open_state
from safe_mcp.gate.ship import Shipper, ship_status
from safe_mcp.trust.config import load_config


@pytest.fixture
def state_url() -> Iterator[str]:
    with fresh_database("safe_mcp_ship") as url:
        yield url


def test_instances_sharing_postgres_ship_each_receipt_once(
        state_url: str, ship_config: Callable[..., Path], s3: Any, locked_bucket: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    cfg = ship_config(state=f'url = "{state_url}"', batch_max=7)
    config = load_config(cfg)
    stores = [open_state(config), open_state(config)]
    shippers = [Shipper(store, config) for store in stores]
    try:
        def work(i: int) -> None:
            for n in range(5):
                stores[i].append(session=f"s{i}", client="c", target="shop", tool="sql_execute", effect="write",
                                 args={"n": n}, decision="allow", reason="t", outcome="executed", policy_digest="d")
                shippers[i].run_once()

        threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        shippers[0].run_once()
        assert shippers[0].last_error is None and shippers[1].last_error is None
        assert ship_status(stores[0])["shipped_seq"] == 10
    finally:
        for store in stores:
            store.close()
    ranges = sorted(tuple(int(x) for x in o["Key"].rsplit("/", 1)[1].removesuffix(".jsonl").split("-"))
                    for o in s3.list_objects_v2(Bucket=locked_bucket)["Contents"])
    covered = [seq for first, last in ranges for seq in range(first, last + 1)]
    assert covered == list(range(1, 11))  # every receipt once, no batch written twice
    capsys.readouterr()
    assert main(["receipts", "verify", "--config", str(cfg), "--against", f"s3://{locked_bucket}/team-a/"]) == 0
    import psycopg

    with psycopg.connect(state_url) as conn:
        conn.execute("SET search_path TO safe_mcp")
        conn.execute("DELETE FROM receipts WHERE seq > 8")
    assert main(["receipts", "verify", "--config", str(cfg), "--against", f"s3://{locked_bucket}/team-a/"]) == 1
    assert "MISMATCH at rcpt_" in capsys.readouterr().out
