"""The email adapter end to end: an MCP client, safe-mcp, and a real SMTP server (aiosmtpd) on 127.0.0.1."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from mailserver import Recorder, Server
from mcp import Client
from support import call, connect, free_port, http_client, refused, serve_cmd, wait_port, write_config

pytestmark = pytest.mark.anyio

PASSWORD = "s3cret-smtp-pass"


def config(tmp: Path, port: int, *, hold_s: float = 0.6, extra: str = "", confirm: str = "", auth: bool = False) -> Path:
    login = 'username = "agent"\npassword = "env:TEST_SMTP_PASSWORD"\n' if auth else ""
    return write_config(tmp, f"""
[targets.mail]
kind = "smtp"
access = "read-write"
host = "127.0.0.1"
port = {port}
tls = "none"
from = "agent@example.com"
allow_recipients = ["*@example.com", "ops@partner.test"]
hold_s = {hold_s}
poll_s = 0.05
retry_base_s = 0.2
{login}{extra}

[confirm]
min_delay_s = 0
{confirm}
""")


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture(autouse=True)
def smtp_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_SMTP_PASSWORD", PASSWORD)


async def until(predicate: Any, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        await anyio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


async def outbox(client: Client) -> dict[str, Any]:
    r = await call(client, "email_outbox", target="mail")
    return dict(r["result"])


async def message_state(client: Client, outbox_id: str) -> dict[str, Any]:
    return next(m for m in (await outbox(client))["messages"] if m["id"] == outbox_id)


async def wait_state(client: Client, outbox_id: str, states: set[str], timeout: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = await message_state(client, outbox_id)
        if m["state"] in states and (m["state"] != "held" or m["attempts"] > 0):
            return m
        await anyio.sleep(0.05)
    raise AssertionError(f"{outbox_id} never reached {states}: {m}")


async def receipts(client: Client, limit: int = 200) -> list[dict[str, Any]]:
    return list((await call(client, "receipts", limit=limit))["receipts"])


# ---------------------------------------------------------------------------------------------- delivery


async def test_send_after_hold_delivered_once_with_the_right_headers(tmp_path: Path, port: int) -> None:
    with Server(port, user="agent", password=PASSWORD) as smtp:
        async with connect(config(tmp_path, port, hold_s=0.8, auth=True)) as client:
            tools = {t.name: t for t in (await client.list_tools()).tools}
            assert tools["email_outbox"].annotations.read_only_hint is True
            assert tools["email_send"].annotations.read_only_hint is False
            sent = await call(client, "email_send", target="mail", to=["Zoë Ops <ops@example.com>"],
                              cc=["cc@example.com"], bcc=["hidden@example.com"], reply_to="team@example.com",
                              subject="Deploy done ✓", body="all green\n.\nbye")
            assert sent["status"] == "ok" and sent["effect"] == "write" and sent["affected"] == 3
            res = sent["result"]
            assert res["state"] == "held" and res["leaves_at"] and res["outbox_id"].startswith("msg_")
            assert sent["undo"] and "leaves at" in sent["message"]
            await anyio.sleep(0.3)
            assert smtp.received == [], "nothing may leave before hold_s has passed"
            done = await wait_state(client, res["outbox_id"], {"sent"})
            assert done["reply"] == "250 OK queued as test" and done["attempts"] == 1
            await anyio.sleep(0.5)  # a few more sender rounds: still once
            assert len(smtp.received) == 1
            got = smtp.received[0]
            assert got.mail_from == "agent@example.com"
            assert sorted(got.rcpt_tos) == ["cc@example.com", "hidden@example.com", "ops@example.com"]
            msg = got.message
            assert msg["Bcc"] is None, "bcc must never be a header"
            assert str(msg["To"]).endswith("<ops@example.com>") and "Zo" in str(msg["To"])
            assert msg["Cc"] == "cc@example.com" and msg["Reply-To"] == "team@example.com"
            assert msg["From"] == "agent@example.com"
            assert msg["Message-ID"] == res["message_id"] == done["message_id"]
            from email.header import decode_header, make_header
            assert str(make_header(decode_header(msg["Subject"]))) == "Deploy done ✓"
            assert msg.get_payload(decode=True).decode().replace("\r\n", "\n") == "all green\n.\nbye\n"
            rs = await receipts(client)
            delivered = [r for r in rs if r["outcome"] == "delivered"]
            assert len(delivered) == 1 and delivered[0]["args"]["outbox_id"] == res["outbox_id"]
            assert delivered[0]["args"]["reply"] == "250 OK queued as test"
            assert delivered[0]["args"]["message_id"] == res["message_id"]
            assert delivered[0]["refers_to"] == sent["receipt_id"], "delivery names the send it completes"
            assert PASSWORD not in json.dumps(rs) and PASSWORD not in json.dumps(await outbox(client))


async def test_cancel_inside_the_window_delivers_nothing_and_after_it_left_undo_says_irreversible(
        tmp_path: Path, port: int) -> None:
    with Server(port) as smtp:
        async with connect(config(tmp_path, port, hold_s=1.0)) as client:
            sent = await call(client, "email_send", target="mail", to=["a@example.com"], subject="oops", body="no")
            undone = await call(client, "undo", receipt_id=sent["receipt_id"])
            assert undone["status"] == "ok" and "cancelled" in undone["message"]
            await anyio.sleep(1.5)
            assert smtp.received == []
            assert (await message_state(client, sent["result"]["outbox_id"]))["state"] == "cancelled"
            assert "already undone" in await refused(client, "undo", receipt_id=sent["receipt_id"])

            gone = await call(client, "email_send", target="mail", to=["a@example.com"], subject="real", body="yes")
            await wait_state(client, gone["result"]["outbox_id"], {"sent"})
            text = await refused(client, "undo", receipt_id=gone["receipt_id"])
            assert "already left" in text and "irreversible" in text and "already sent" in text
            assert len(smtp.received) == 1


async def test_cli_outbox_cancel_and_list(tmp_path: Path, port: int, capsys: pytest.CaptureFixture[str]) -> None:
    from safe_mcp.faces.cli import main

    with Server(port) as smtp:
        cfg = config(tmp_path, port, hold_s=1.5)
        async with connect(cfg) as client:
            sent = await call(client, "email_send", target="mail", to=["a@example.com"], subject="cli", body="x")
            oid = sent["result"]["outbox_id"]
            assert main(["outbox", "list", "--config", str(cfg)]) == 0
            assert oid in capsys.readouterr().out
            assert main(["outbox", "cancel", oid, "--config", str(cfg)]) == 0
            assert "cancelled" in capsys.readouterr().out
            assert main(["outbox", "cancel", oid, "--config", str(cfg)]) == 1
            await anyio.sleep(2.0)
            assert smtp.received == []
            assert (await message_state(client, oid))["state"] == "cancelled"


# ---------------------------------------------------------------------------------------------- policy


@pytest.mark.parametrize(("args", "named"), [
    ({"to": ["evil@attacker.test"]}, "evil@attacker.test"),
    ({"to": ["a@example.com"], "cc": ["evil@attacker.test"]}, "evil@attacker.test"),
    ({"to": ["a@example.com"], "bcc": ["EVIL@Attacker.test"]}, "EVIL@Attacker.test"),
    ({"to": ['"boss@example.com" <evil@attacker.test>']}, "evil@attacker.test"),
    ({"to": ['"evil@attacker.test" <a@example.com>']}, "evil@attacker.test"),
    ({"to": ["a@example.com, evil@attacker.test"]}, "one address per list entry"),
    ({"to": ["a@example.com.attacker.test"]}, "a@example.com.attacker.test"),
    ({"to": ["a%attacker.test@example.com"]}, "a%attacker.test@example.com"),
    ({"to": ["a@example.com"], "reply_to": "evil@attacker.test"}, "evil@attacker.test"),
    ({"to": ["a@example.com"], "cc": ["ops@partner.test", "x@partner.test"]}, "x@partner.test"),
])
async def test_allow_list_refuses_the_whole_message(tmp_path: Path, port: int, args: dict[str, Any], named: str) -> None:
    with Server(port) as smtp:
        async with connect(config(tmp_path, port, hold_s=0.1)) as client:
            text = await refused(client, "email_send", target="mail", subject="s", body="b", **args)
            assert named in text
            assert smtp.received == [] and (await outbox(client))["messages"] == []  # nothing queued: nothing can leave


@pytest.mark.parametrize(("args", "says"), [
    ({"subject": "hi\r\nBcc: evil@attacker.test"}, "header injection"),
    ({"subject": "hi\nX-Evil: 1"}, "header injection"),
    ({"subject": "hi\rX-Evil: 1"}, "header injection"),
    ({"subject": "hi\u2028X-Evil: 1"}, "header injection"),
    ({"to": ["a@example.com\r\nBcc: evil@attacker.test"]}, "header injection"),
    ({"to": ["a@example.com"], "cc": ["b@example.com\nBcc: evil@attacker.test"]}, "header injection"),
    ({"reply_to": "a@example.com\r\nBcc: evil@attacker.test"}, "header injection"),
    ({"to": ["Name\r\n <a@example.com>"]}, "header injection"),
    ({"subject": "nul\x00"}, "NUL"),
    ({"body": "nul\x00body"}, "NUL"),
    ({"body": "bad \ud800 text"}, "not valid UTF-8"),
    ({"subject": "bad \udcff"}, "not valid UTF-8"),
    ({"body": "x" * 2001}, "max_body_bytes"),
    ({"to": ["not-an-address"]}, "not a valid address"),
    ({"to": ["a@localhost"]}, "not a plain address"),
    ({"to": ["a@"]}, "not a valid address"),
    ({"to": []}, "at least one recipient"),
    ({"to": [f"u{i}@example.com" for i in range(4)]}, "max_recipients"),
    ({"to": ["undisclosed-recipients: a@example.com;"]}, "group"),
])
async def test_bad_input_is_refused_clearly(tmp_path: Path, port: int, args: dict[str, Any], says: str) -> None:
    with Server(port) as smtp:
        cfg = config(tmp_path, port, hold_s=0.1, extra="max_body_bytes = 2000\nmax_recipients = 3")
        async with connect(cfg) as client:
            full = {"to": ["a@example.com"], "subject": "s", "body": "b", **args}
            text = await refused(client, "email_send", target="mail", **full)
            assert says in text, text
            assert smtp.received == [] and (await outbox(client))["messages"] == []


async def test_rate_limit_per_hour(tmp_path: Path, port: int) -> None:
    with Server(port):
        async with connect(config(tmp_path, port, hold_s=5, extra="messages_per_hour = 2")) as client:
            for i in range(2):
                await call(client, "email_send", target="mail", to=["a@example.com"], subject=f"n{i}", body="b")
            text = await refused(client, "email_send", target="mail", to=["a@example.com"], subject="n3", body="b")
            assert "rate limit" in text and "messages_per_hour = 2" in text
            assert len((await outbox(client))["messages"]) == 2


async def test_hold_zero_is_irreversible_and_waits_for_a_human(tmp_path: Path, port: int) -> None:
    with Server(port) as smtp:
        async with connect(config(tmp_path, port, hold_s=0)) as client:
            r = await call(client, "email_send", target="mail", to=["a@example.com"], subject="now", body="b")
            assert r["status"] == "pending" and r["effect"] == "irreversible"
            assert r["pending"]["confirm_by"] == "human"
            assert "human" in await refused(client, "confirm", action_id=r["pending"]["action_id"])
            await anyio.sleep(0.3)
            assert smtp.received == [] and (await outbox(client))["messages"] == []


# ---------------------------------------------------------------------------------------------- retries


async def test_idempotency_key_and_likely_duplicates(tmp_path: Path, port: int) -> None:
    with Server(port) as smtp:
        async with connect(config(tmp_path, port, hold_s=1.0)) as client:
            msg = {"target": "mail", "to": ["a@example.com"], "subject": "invoice", "body": "pay"}
            first = await call(client, "email_send", **msg, idempotency_key="inv-1")
            again = await call(client, "email_send", **msg, idempotency_key="inv-1")
            assert again["status"] == "duplicate" and again["result"]["outbox_id"] == first["result"]["outbox_id"]

            plain = {**msg, "subject": "reminder"}
            one = await call(client, "email_send", **plain)
            retry = await call(client, "email_send", **plain)
            assert one["result"]["likely_duplicate"] is False
            assert retry["result"]["likely_duplicate"] is True and retry["affected"] == 0
            assert retry["result"]["duplicate_of"] == one["result"]["outbox_id"]
            assert "likely duplicate" in retry["message"]
            # The duplicate queued nothing, so its undo (the contract's empty compensation) cancels nothing:
            # above all not the first message, which only its own receipt may cancel.
            empty = await call(client, "undo", receipt_id=retry["receipt_id"])
            assert empty["affected"] == 0 and "nothing to cancel" in empty["message"]
            assert (await message_state(client, one["result"]["outbox_id"]))["state"] == "held"
            deliberate = await call(client, "email_send", **plain, idempotency_key="second-reminder")
            assert deliberate["result"]["likely_duplicate"] is False

            await until(lambda: len(smtp.received) == 3, what="three deliveries")
            await anyio.sleep(0.5)
            subjects = sorted(r.message["Subject"] for r in smtp.received)
            assert subjects == ["invoice", "reminder", "reminder"]


async def test_server_down_then_up_retries_with_backoff_and_delivers_once(tmp_path: Path, port: int) -> None:
    async with connect(config(tmp_path, port, hold_s=0.1)) as client:
        sent = await call(client, "email_send", target="mail", to=["a@example.com"], subject="later", body="b")
        oid = sent["result"]["outbox_id"]
        m = await wait_state(client, oid, {"held"})
        assert m["status"] == "waiting to retry" and "cannot connect" in m["last_error"]
        await anyio.sleep(0.8)
        m = await message_state(client, oid)
        assert 2 <= m["attempts"] <= 4, f"backoff doubles from 0.2s, so only a few attempts fit: {m}"
        rs = await receipts(client)
        assert any(r["outcome"] == "delivery_retry" and "cannot connect" in r["reason"] for r in rs)
        with Server(port) as smtp:
            await wait_state(client, oid, {"sent"}, timeout=15)
            await anyio.sleep(0.3)
            assert len(smtp.received) == 1


async def test_server_refusing_4xx_stays_queued_then_delivers(tmp_path: Path, port: int) -> None:
    rec = Recorder(script=["451 4.3.0 try again later", "421 4.7.0 busy"])
    with Server(port, rec) as smtp:
        async with connect(config(tmp_path, port, hold_s=0.1)) as client:
            sent = await call(client, "email_send", target="mail", to=["a@example.com"], subject="s", body="b")
            oid = sent["result"]["outbox_id"]
            m = await wait_state(client, oid, {"held"})
            assert "451 4.3.0 try again later" in m["last_error"]
            done = await wait_state(client, oid, {"sent"}, timeout=15)
            assert done["attempts"] == 3 and len(smtp.received) == 1
            rs = await receipts(client)
            assert [r["outcome"] for r in rs if r["outcome"].startswith("deliver")] == [
                "delivery_retry", "delivery_retry", "delivered"]


async def test_server_refusing_5xx_fails_with_the_error_and_is_not_retried(tmp_path: Path, port: int) -> None:
    rec = Recorder(script=["554 5.7.1 rejected: policy"])
    with Server(port, rec) as smtp:
        async with connect(config(tmp_path, port, hold_s=0.1)) as client:
            sent = await call(client, "email_send", target="mail", to=["a@example.com"], subject="s", body="b")
            m = await wait_state(client, sent["result"]["outbox_id"], {"failed"})
            assert "554 5.7.1 rejected: policy" in m["last_error"]
            await anyio.sleep(0.5)
            assert rec.attempts == 1 and smtp.received == []
            rs = await receipts(client)
            assert any(r["outcome"] == "delivery_failed" and "554" in r["reason"] for r in rs)
            text = await refused(client, "undo", receipt_id=sent["receipt_id"])
            assert "never sent" in text


# ---------------------------------------------------------------------------------------------- restarts


async def test_restart_with_held_messages_delivers_each_exactly_once(tmp_path: Path, port: int) -> None:
    with Server(port) as smtp:
        cfg = config(tmp_path, port, hold_s=1.5)
        async with connect(cfg, "stdio") as client:
            ids = []
            for i in range(3):
                r = await call(client, "email_send", target="mail", to=["a@example.com"], subject=f"m{i}", body="b")
                ids.append(r["result"]["message_id"])
        assert smtp.received == [], "the first server stopped before any hold passed"
        async with connect(cfg, "stdio") as client:
            await until(lambda: len(smtp.received) == 3, what="three deliveries after the restart")
            await anyio.sleep(0.5)
            box = await outbox(client)
            assert sorted(m["state"] for m in box["messages"]) == ["sent"] * 3
        got = [r.message["Message-ID"] for r in smtp.received]
        assert sorted(got) == sorted(ids)
        async with connect(cfg, "stdio") as client:  # and a third start sends nothing again
            await anyio.sleep(0.6)
        assert len(smtp.received) == 3


async def test_a_crash_mid_send_is_reported_never_sent_twice(tmp_path: Path, port: int) -> None:
    rec = Recorder(delay_s=1.5)
    with Server(port, rec) as smtp:
        cfg = config(tmp_path, port, hold_s=0.1)
        http = free_port()
        proc = subprocess.Popen(serve_cmd(cfg, "--transport", "http", "--port", str(http)),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_port(http, proc)
            async with http_client(f"http://127.0.0.1:{http}/mcp", cfg) as client:
                sent = await call(client, "email_send", target="mail", to=["a@example.com"], subject="s", body="b")
                await anyio.to_thread.run_sync(rec.entered.wait, 10)
                proc.kill()  # the sender is inside DATA, waiting for the server's reply
        finally:
            proc.kill()
            proc.wait(10)
        await until(lambda: len(smtp.received) == 1, what="the server finishing the message it had")
        async with connect(cfg) as client:
            m = await wait_state(client, sent["result"]["outbox_id"], {"unknown"})
            assert "not re-sent" in m["last_error"]
            await anyio.sleep(0.5)
            assert len(smtp.received) == 1 and rec.attempts == 1
            rs = await receipts(client)
            assert any(r["outcome"] == "delivery_unknown" for r in rs)
            assert "already left" in await refused(client, "undo", receipt_id=sent["receipt_id"])
