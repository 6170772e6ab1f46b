"""Addresses are normalised once, and that one form is what the allow-list checks, what the SMTP server
receives and what duplicate detection compares. Every test looks at what aiosmtpd actually received."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest
from mailserver import Server
from support import call, connect, free_port, refused, write_config
from test_smtp import outbox, until, wait_state

pytestmark = pytest.mark.anyio


def config(tmp: Path, port: int, *, hold_s: float = 0.6, allow: str = '"*@example.com", "*@bücher.example"') -> Path:
    return write_config(tmp, f"""
[targets.mail]
kind = "smtp"
access = "read-write"
host = "127.0.0.1"
port = {port}
tls = "none"
from = "agent@example.com"
allow_recipients = [{allow}]
hold_s = {hold_s}
poll_s = 0.05
max_recipients = 5

[confirm]
min_delay_s = 0
""")


@pytest.fixture
def port() -> int:
    return free_port()


# ------------------------------------------------------------------------------------------- duplicates


@pytest.mark.parametrize(("first", "again"), [
    ({"to": ["Bob <bob@Example.COM>"]}, {"to": ["bob@example.com"]}),
    ({"to": ["bob@example.com"]}, {"to": ['"Robert (work)" <BOB@EXAMPLE.COM>']}),
    ({"to": ["bob@example.com"]}, {"to": ["  bob@example.com  "]}),
    ({"to": ["bob@example.com"]}, {"to": ["bob@example.com (a comment)"]}),
    ({"to": ["a@example.com", "b@example.com"]}, {"to": ["B@example.com", "a@Example.com"]}),
    ({"to": ["a@example.com"], "cc": ["b@example.com"]}, {"to": ["b@example.com"], "bcc": ["a@example.com"]}),
    ({"to": ["a@example.com", "a@example.com"]}, {"to": ["a@example.com"]}),
    ({"to": ["a@bücher.example"]}, {"to": ["a@XN--BCHER-KVA.example"]}),
    ({"subject": "invoice  7"}, {"subject": " invoice 7 "}),
    ({"body": "line one\nline two\n"}, {"body": "line one\r\nline two"}),
])
async def test_the_same_mail_to_the_same_people_is_a_likely_duplicate(
        tmp_path: Path, port: int, first: dict[str, Any], again: dict[str, Any]) -> None:
    base = {"target": "mail", "to": ["bob@example.com"], "subject": "invoice 7", "body": "pay"}
    with Server(port) as smtp:
        async with connect(config(tmp_path, port, hold_s=1.0)) as client:
            one = await call(client, "email_send", **{**base, **first})
            two = await call(client, "email_send", **{**base, **again})
            assert one["result"]["likely_duplicate"] is False
            assert two["result"]["likely_duplicate"] is True, two
            assert two["result"]["duplicate_of"] == one["result"]["outbox_id"] and two["affected"] == 0
            await wait_state(client, one["result"]["outbox_id"], {"sent"})
            await anyio.sleep(0.4)
            assert len(smtp.received) == 1, "the retry must not reach the server"
            assert len((await outbox(client))["messages"]) == 1


@pytest.mark.parametrize("again", [
    {"to": ["bob@example.com", "carol@example.com"]},
    {"to": ["carol@example.com"]},
    {"body": "pay now"},
    {"subject": "invoice 8"},
])
async def test_other_people_or_other_content_is_not_a_duplicate(tmp_path: Path, port: int, again: dict[str, Any]) -> None:
    base = {"target": "mail", "to": ["bob@example.com"], "subject": "invoice 7", "body": "pay"}
    with Server(port) as smtp:
        async with connect(config(tmp_path, port, hold_s=0.2)) as client:
            await call(client, "email_send", **base)
            two = await call(client, "email_send", **{**base, **again})
            assert two["result"]["likely_duplicate"] is False
            await until(lambda: len(smtp.received) == 2, what="both messages")


async def test_one_idempotency_key_sends_once_whatever_the_spelling_of_the_retry(tmp_path: Path, port: int) -> None:
    with Server(port) as smtp:
        async with connect(config(tmp_path, port, hold_s=0.2)) as client:
            msg = {"target": "mail", "subject": "s", "body": "b", "idempotency_key": "k-1"}
            first = await call(client, "email_send", to=["bob@example.com"], **msg)
            for _ in range(3):
                again = await call(client, "email_send", to=["bob@example.com"], **msg)
                assert again["status"] == "duplicate" and again["result"]["outbox_id"] == first["result"]["outbox_id"]
            # The same key for a differently spelled call is refused, never queued.
            text = await refused(client, "email_send", to=["Bob <BOB@example.com>"], **msg)
            assert "idempotency_key" in text
            await wait_state(client, first["result"]["outbox_id"], {"sent"})
            await anyio.sleep(0.4)
            assert len(smtp.received) == 1 and len((await outbox(client))["messages"]) == 1


# ------------------------------------------------------------------------------------------- allow-list


@pytest.mark.parametrize(("to", "rcpt"), [
    ("Bob <bob@Example.COM>", "bob@example.com"),
    ("a@bücher.example", "a@xn--bcher-kva.example"),
    ("a@BÜCHER.EXAMPLE", "a@xn--bcher-kva.example"),
    ("a@XN--BCHER-KVA.example", "a@xn--bcher-kva.example"),
    ("ok@example.com (evil@attacker.test)", "ok@example.com"),
    ("(evil@attacker.test) ok@example.com", "ok@example.com"),
    ("ok(evil@attacker.test)@example.com", "ok@example.com"),
    ('"other@example.com" <ok@example.com>', "ok@example.com"),
])
async def test_the_normalised_address_is_what_is_checked_and_what_the_server_gets(
        tmp_path: Path, port: int, to: str, rcpt: str) -> None:
    with Server(port) as smtp:
        async with connect(config(tmp_path, port, hold_s=0.1)) as client:
            sent = await call(client, "email_send", target="mail", to=[to], subject="s", body="b")
            await wait_state(client, sent["result"]["outbox_id"], {"sent"})
            assert len(smtp.received) == 1
            got = smtp.received[0]
            assert got.rcpt_tos == [rcpt]
            assert rcpt in str(got.message["To"]).lower()
            assert "attacker" not in got.data.decode("ascii", "replace"), "a comment never reaches the wire"
            assert not got.data.decode("ascii", "replace").count("bücher"), "the wire carries punycode only"


@pytest.mark.parametrize(("field", "value", "named"), [
    ("to", "a@ex\u0430mple.com", "a@ex\u0430mple.com"),  # Cyrillic a: another domain (xn--exmple-4nf.com)
    ("cc", "a@\uff45\uff58\uff41\uff4d\uff50\uff4c\uff45.com", "would be sent as"),  # fullwidth: IDNA would silently change it
    ("bcc", "a@exa\u00admple.com", "would be sent as"),  # soft hyphen, dropped by IDNA
    ("to", "a@bücher.example.attacker.test", "xn--bcher-kva.example.attacker.test"),
    ("to", '"evil@attacker.test" <ok@example.com>', "evil@attacker.test"),
    ("to", "=?utf-8?q?evil=40attacker.test?= <ok@example.com>", "evil@attacker.test"),
    ("to", '"evil\uff20attacker.test" <ok@example.com>', "evil@attacker.test"),  # fullwidth @ in the name
    ("reply_to", '"Boss <boss@attacker.test>" <ok@example.com>', "boss@attacker.test"),
    ("cc", "ok@example.com (x) <evil@attacker.test>", "not a valid address"),
    ("to", "a@[127.0.0.1]", "not a plain address"),
])
async def test_lookalike_and_hidden_addresses_are_refused_whole(
        tmp_path: Path, port: int, field: str, value: str, named: str) -> None:
    with Server(port) as smtp:
        async with connect(config(tmp_path, port, hold_s=0.1)) as client:
            args: dict[str, Any] = {"to": ["a@example.com"], "subject": "s", "body": "b"}
            args[field] = value if field == "reply_to" else [value]
            text = await refused(client, "email_send", target="mail", **args)
            assert named in text, text
            await anyio.sleep(0.3)
            assert smtp.received == [] and (await outbox(client))["messages"] == []


async def test_an_idn_allow_pattern_matches_its_punycode_and_nothing_else(tmp_path: Path, port: int) -> None:
    with Server(port) as smtp:
        async with connect(config(tmp_path, port, hold_s=0.1, allow='"*@BÜCHER.example"')) as client:
            ok = await call(client, "email_send", target="mail", to=["a@xn--bcher-kva.example"], subject="s", body="b")
            text = await refused(client, "email_send", target="mail", to=["a@bucher.example"], subject="s", body="b")
            assert "outside allow_recipients" in text
            await wait_state(client, ok["result"]["outbox_id"], {"sent"})
            await anyio.sleep(0.3)
            assert [r.rcpt_tos for r in smtp.received] == [["a@xn--bcher-kva.example"]]
