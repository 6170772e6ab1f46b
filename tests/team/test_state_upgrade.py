"""A state store made by an earlier safe-mcp opens with this one: its tables gain what this version keeps (the
`sealed` mark of pending actions) and the actions waiting in it can still be listed and confirmed."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from support import write_config

from safe_mcp.adapter import Call
from safe_mcp.faces.demo import create_shop
from safe_mcp.gate.calls import Caller
from safe_mcp.gate.runtime import Runtime, open_state
from safe_mcp.trust.config import load_config


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_a_store_without_sealed_pending_actions_is_upgraded_and_its_actions_still_run(
        tmp_path: Path, kind: str, request: pytest.FixtureRequest) -> None:
    create_shop(tmp_path / "shop.db")
    state = f'url = "{request.getfixturevalue("state_url")}"' if kind == "postgres" else 'path = "state"'
    cfg = write_config(tmp_path, f'[targets.admin]\nkind = "sqlite"\npath = "shop.db"\naccess = "read-write"\n'
                                 f'[confirm]\nwrite = "agent"\nmin_delay_s = 0\n[state]\n{state}\n')
    me = Caller(session="s", client="c")
    runtime = Runtime(load_config(cfg))
    try:
        pending = runtime.gate.run(Call(target="admin", tool="sql_execute",
                                        args={"sql": "UPDATE orders SET status = 'old' WHERE id = 2"}), me)
    finally:
        runtime.close()
    assert pending.status == "pending" and pending.pending is not None
    store = open_state(load_config(cfg))
    try:  # as an earlier version left it: no sealed column
        with store.transaction() as tx:
            tx.execute("ALTER TABLE pending DROP COLUMN sealed")
    finally:
        store.close()
    runtime = Runtime(load_config(cfg))
    try:
        [waiting] = runtime.store.pending_list()
        assert waiting.id == pending.pending.action_id and waiting.sealed is False
        done = runtime.gate.confirm(waiting.id, me)
        assert done.status == "ok" and done.affected == 1
    finally:
        runtime.close()
    db = sqlite3.connect(tmp_path / "shop.db")
    try:
        assert db.execute("SELECT status FROM orders WHERE id = 2").fetchone() == ("old",)
    finally:
        db.close()
