"""The other channels: the web page in headless Chromium, elicitation where trusted, the webhook, waiting."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from approval_helpers import ENV, IRREVERSIBLE, Approver, cli, columns, make, receipts
from mcp import Client, StdioServerParameters, types
from support import call, connect, free_port, refused, require, serve_cmd, wait_port

pytestmark = pytest.mark.anyio
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def require_chromium() -> None:
    require(os.path.exists(CHROMIUM), f"{CHROMIUM} is missing (scripts/test installs Debian's chromium)")


async def test_web_page_approve_and_deny_in_headless_chromium(tmp_path: Path) -> None:
    require_chromium()
    from playwright.async_api import async_playwright

    cfg = make(tmp_path)
    alice = Approver(cfg, "alice")
    port = free_port()
    params = StdioServerParameters(command=sys.executable, args=[*serve_cmd(cfg)[1:], "--approvals-port", str(port)],
                                   env=ENV)
    async with Client(params) as c:
        wait_port(port)
        url = f"http://127.0.0.1:{port}/approvals"
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            page = await browser.new_page()
            await page.goto(url)
            assert "nothing waits" in await page.content()
            # live: the action appears without a reload
            first = (await call(c, "sql_execute", target="admin", sql=IRREVERSIBLE))["pending"]["action_id"]
            item = page.locator(f"li#{first}")
            await item.wait_for(timeout=10000)
            assert "ALTER TABLE orders ADD COLUMN note" in await item.locator("pre.statement").inner_text()
            await item.locator("input[name=name]").fill("alice")
            await item.locator("input[name=code]").fill("123456" if alice.totp.now() != "123456" else "654321")
            await item.locator("button[value=approve]").click()
            await page.wait_for_load_state()
            assert "wrong or reused code" in await page.locator("#message").inner_text()
            item = page.locator(f"li#{first}")
            await item.locator("input[name=name]").fill("alice")
            await item.locator("input[name=code]").fill(alice.code())
            await item.locator("button[value=approve]").click()
            await page.wait_for_load_state()
            assert "is approved" in await page.locator("#message").inner_text()
            assert (await call(c, "confirm", action_id=first))["status"] == "ok"
            assert "note" in columns(tmp_path)

            second = (await call(c, "sql_execute", target="admin",
                                 sql=IRREVERSIBLE.replace("note", "memo")))["pending"]["action_id"]
            await page.goto(url)
            item = page.locator(f"li#{second}")
            await item.locator("input[name=name]").fill("alice")
            await item.locator("input[name=code]").fill(alice.code())
            await item.locator("input[name=reason]").fill("<b>no</b>")
            await item.locator("button[value=deny]").click()
            await page.wait_for_load_state()
            assert "is denied" in await page.locator("#message").inner_text()
            await browser.close()
        assert "denied" in await refused(c, "confirm", action_id=second)

        # Host, Origin and CSRF checks (what a malicious page or DNS rebinding would try)
        async with httpx2.AsyncClient() as h:
            assert (await h.get(url, headers={"Host": f"evil.example:{port}"})).status_code == 403
            got = await h.get(url)
            assert got.status_code == 200 and got.headers["content-security-policy"]
            token = got.text.split('name="csrf" value="')[1].split('"')[0] if 'name="csrf"' in got.text else "x"
            form = {"action_id": "act_x", "name": "alice", "code": "000000", "decision": "approve", "csrf": token}
            assert (await h.post(url, data=form)).status_code == 403  # no Origin
            bad = await h.post(url, data=form, headers={"Origin": "http://evil.example"})
            assert bad.status_code == 403
            no_csrf = await h.post(url, data={**form, "csrf": "forged"}, headers={"Origin": f"http://127.0.0.1:{port}"})
            assert no_csrf.status_code == 403 and "CSRF" in no_csrf.text
    web = [r for r in receipts(tmp_path, "approve") + receipts(tmp_path, "deny") if r["outcome"] != "refused"]
    assert {r["client"] for r in web} == {"approver:alice via web"}


def elicit_and_count(answers: list[str]) -> Any:
    async def on_elicit(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        answers.append(params.message)
        return types.ElicitResult(action="accept", content={"approve": True})
    return on_elicit


async def test_elicitation_counts_only_where_trusted(tmp_path: Path) -> None:
    from safe_mcp.faces.server import build_server
    from safe_mcp.gate.runtime import Runtime
    from safe_mcp.trust.config import load_config

    cfg = make(tmp_path)
    asked: list[str] = []
    async with Client(build_server(Runtime(load_config(cfg))), elicitation_callback=elicit_and_count(asked)) as c:
        action = (await call(c, "sql_execute", target="admin", sql=IRREVERSIBLE))["pending"]["action_id"]
        assert "human" in await refused(c, "confirm", action_id=action)
        assert asked == []
    assert "note" not in columns(tmp_path)

    make(tmp_path, target_extra="trust_client_elicitation = true")
    async with Client(build_server(Runtime(load_config(cfg))), elicitation_callback=elicit_and_count(asked)) as c:
        action = (await call(c, "sql_execute", target="admin", sql=IRREVERSIBLE))["pending"]["action_id"]
        done = await call(c, "confirm", action_id=action)
        assert done["status"] == "ok" and len(asked) == 1 and "ALTER TABLE" in asked[0]
    assert "note" in columns(tmp_path)
    assert str(receipts(tmp_path, "approve")[0]["client"]).startswith("elicitation:")


class Hook(BaseHTTPRequestHandler):
    got: list[dict[str, Any]] = []
    fail_first = True

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if Hook.fail_first:
            Hook.fail_first = False
            self.send_response(500)
        else:
            Hook.got.append(body)
            self.send_response(200)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


# With provider sign-in the page is the only way an oidc: approver decides, so the webhook points there.
SIGN_IN = '\noidc_client_id = "safe-mcp-approvals"\noidc_issuer = "http://127.0.0.1:9"\n[server]\nroles = {approver = ["ops"]}'


@pytest.mark.parametrize("sign_in", [False, True], ids=["codes", "provider sign-in"])
async def test_webhook_gets_the_pending_action_with_retries(tmp_path: Path, sign_in: bool) -> None:
    Hook.got.clear()
    Hook.fail_first = True  # each case sees one failed delivery first, then the retry
    hook = HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    try:
        cfg = make(tmp_path, approvals_extra=f'notify_url = "http://127.0.0.1:{hook.server_port}/hook"'
                   + (SIGN_IN if sign_in else ""))
        async with connect(cfg, "memory") as c:
            action = (await call(c, "sql_execute", target="admin", sql=IRREVERSIBLE))["pending"]["action_id"]
            with anyio.fail_after(10):
                while not Hook.got:
                    await anyio.sleep(0.05)
            body = Hook.got[0]
            assert action in body["text"] and body["action"]["action_id"] == action
            how = "sign in on the approval page" if sign_in else f"safe-mcp approve {action} --as NAME"
            assert how in body["text"]
            assert "ALTER TABLE" in body["action"]["statement"]["sql"]
            assert "human" in await refused(c, "confirm", action_id=action)  # notifying approves nothing
    finally:
        hook.shutdown()
        hook.server_close()


async def test_wait_s_blocks_until_the_human_decides(tmp_path: Path) -> None:
    cfg = make(tmp_path)
    alice = Approver(cfg, "alice")
    progress: list[float] = []

    async def on_progress(p: float, total: float | None, message: str | None) -> None:
        progress.append(p)

    async with connect(cfg, "memory") as c:
        action = (await call(c, "sql_execute", target="admin", sql=IRREVERSIBLE))["pending"]["action_id"]
        # a short wait with nobody deciding: timeouts deny
        r = await c.call_tool("confirm", {"action_id": action, "wait_s": 0.6})
        assert r.is_error and "human" in r.content[0].text
        code = alice.code()

        def approve_later() -> None:
            import time
            time.sleep(1.0)
            assert alice.approve(cfg, action, code=code).returncode == 0

        t = threading.Thread(target=approve_later)
        t.start()
        r = await c.call_tool("confirm", {"action_id": action, "wait_s": 20}, progress_callback=on_progress)
        t.join()
        assert not r.is_error, r.content[0].text
        assert r.structured_content is not None and r.structured_content["status"] == "ok"
        assert progress
    assert "note" in columns(tmp_path)
    assert subprocess.run([sys.executable, "-c", "pass"]).returncode == 0 and cli(cfg, "pending").returncode == 0
