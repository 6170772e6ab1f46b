"""Team rule over real HTTP: the token that requested a human action cannot approve it."""

from __future__ import annotations

from pathlib import Path

import pytest
from approval_helpers import ENV, IRREVERSIBLE, Approver, columns, make
from support import call, create_token, http_client, refused, serving

pytestmark = pytest.mark.anyio


async def test_the_requesting_token_cannot_approve_its_own_action(tmp_path: Path) -> None:
    cfg = make(tmp_path)
    bob, alice = Approver(cfg, "bob"), Approver(cfg, "alice")
    bob_token = create_token(cfg, name="bob", env=ENV)
    with serving(cfg, "http", env=ENV) as port:
        async with http_client(f"http://127.0.0.1:{port}/mcp", cfg, token=bob_token) as client:
            pending = await call(client, "sql_execute", target="admin", sql=IRREVERSIBLE)
            action = pending["pending"]["action_id"]
            own = bob.approve(cfg, action)
            assert own.returncode == 1 and "cannot approve it" in own.stderr
            assert "human" in await refused(client, "confirm", action_id=action)
            assert "note" not in columns(tmp_path)
            other = alice.approve(cfg, action)
            assert other.returncode == 0, other.stderr
            done = await call(client, "confirm", action_id=action)
            assert done["status"] == "ok" and "note" in columns(tmp_path)
