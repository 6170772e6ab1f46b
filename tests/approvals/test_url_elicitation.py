"""A client that takes URL-mode elicitation is offered the approval page when an action waits for a human.

The page still decides, with the approver's own code: the client only shows the URL. Driven over real
streamable HTTP with the mcp client (which declares URL-mode elicitation when it has a callback).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx2
import pytest
from approval_helpers import ENV, IRREVERSIBLE, Approver, columns, make
from mcp import Client, types
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from support import create_token, ledger_rows, serving

pytestmark = pytest.mark.anyio

URL_ELICITATION_REQUIRED = -32042


async def test_an_action_waiting_for_a_human_offers_the_approval_page(tmp_path: Path) -> None:
    cfg = make(tmp_path)
    alice = Approver(cfg, "alice")
    token = create_token(cfg, name="agent", env=ENV)
    answered: list[str] = []

    async def on_elicit(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        answered.append(getattr(params, "message", ""))  # a form prompt would count as approval: never sent here
        return types.ElicitResult(action="accept", content={"approve": True})

    with serving(cfg, "http", env=ENV) as port:
        async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}) as http, \
                Client(streamable_http_client(f"http://127.0.0.1:{port}/mcp", http_client=http),
                       elicitation_callback=on_elicit) as client:
            pending = await client.call_tool("sql_execute", {"target": "admin", "sql": IRREVERSIBLE})
            action = pending.structured_content["pending"]["action_id"]  # type: ignore[index]
            with pytest.raises(MCPError) as offered:
                await client.call_tool("confirm", {"action_id": action})
            assert offered.value.error.code == URL_ELICITATION_REQUIRED
            [elicitation] = offered.value.error.data["elicitations"]  # type: ignore[index]
            assert elicitation["url"] == f"http://127.0.0.1:{port}/approvals" and elicitation["mode"] == "url"
            assert action in elicitation["message"]
            assert answered == [] and "note" not in columns(tmp_path), "the client approved nothing; nothing ran"
            refusals = [r for (r,) in ledger_rows(cfg, "SELECT body FROM receipts") if '"outcome":"refused"' in str(r)]
            assert any(action in str(r) and "human" in str(r) for r in refusals), "the refusal was receipted first"
            assert alice.approve(cfg, action).returncode == 0  # the approver, with their code
            done = await client.call_tool("confirm", {"action_id": action})
            assert not done.is_error and "note" in columns(tmp_path)


async def test_a_client_without_url_elicitation_gets_the_refusal_it_always_got(tmp_path: Path) -> None:
    cfg = make(tmp_path)
    token = create_token(cfg, name="agent", env=ENV)
    with serving(cfg, "http", env=ENV) as port:
        async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}) as http, \
                Client(streamable_http_client(f"http://127.0.0.1:{port}/mcp", http_client=http)) as client:
            pending = await client.call_tool("sql_execute", {"target": "admin", "sql": IRREVERSIBLE})
            action = pending.structured_content["pending"]["action_id"]  # type: ignore[index]
            r = await client.call_tool("confirm", {"action_id": action})
            assert r.is_error and "waits for approval by a human" in r.content[0].text  # type: ignore[union-attr]
    assert "note" not in columns(tmp_path)
