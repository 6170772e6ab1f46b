"""SES targets against moto's server, the account guard, config validation and `safe-mcp check`."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from support import call, connect, free_port, refused, wait_port, write_config

from safe_mcp.errors import ConfigError

pytestmark = pytest.mark.anyio
KEY = "AKIATESTINGKEY00001"
SECRET = "testing-secret-key-value"


@pytest.fixture(scope="module")
def moto() -> Iterator[str]:
    port = free_port()
    exe = Path(sys.executable).with_name("moto_server")
    # moto logs every request; a pipe nobody reads would block it once full, so the log goes to a file
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen([str(exe), "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=log)
        try:
            wait_port(port, proc)
            yield f"http://127.0.0.1:{port}"
        finally:
            proc.terminate()
            proc.wait(10)


@pytest.fixture
def ses_env(monkeypatch: pytest.MonkeyPatch, moto: str) -> str:
    monkeypatch.setenv("TEST_SES_KEY", KEY)
    monkeypatch.setenv("TEST_SES_SECRET", SECRET)
    import boto3

    client = boto3.client("sesv2", region_name="eu-west-1", endpoint_url=moto,
                          aws_access_key_id=KEY, aws_secret_access_key=SECRET)
    client.create_email_identity(EmailIdentity="agent@example.com")
    return moto


def ses_config(tmp: Path, endpoint: str, account: str = "123456789012") -> Path:
    return write_config(tmp, f"""
[targets.ses]
kind = "ses"
access = "read-write"
region = "eu-west-1"
account = "{account}"
endpoint_url = "{endpoint}"
access_key_id = "env:TEST_SES_KEY"
secret_access_key = "env:TEST_SES_SECRET"
from = "agent@example.com"
allow_recipients = ["*@example.com"]
hold_s = 0.5
poll_s = 0.05
retry_base_s = 0.2
""")


def sent_count(endpoint: str) -> int:
    import boto3

    ses = boto3.client("ses", region_name="eu-west-1", endpoint_url=endpoint,
                       aws_access_key_id=KEY, aws_secret_access_key=SECRET)
    return int(ses.get_send_quota()["SentLast24Hours"])


async def test_ses_send_after_hold_once_and_cancel(tmp_path: Path, ses_env: str) -> None:
    before = sent_count(ses_env)
    async with connect(ses_config(tmp_path, ses_env)) as client:
        sent = await call(client, "email_send", target="ses", to=["ops@example.com"], bcc=["b@example.com"],
                          subject="from ses", body="hello")
        cancel = await call(client, "email_send", target="ses", to=["ops@example.com"], subject="never", body="x")
        await call(client, "undo", receipt_id=cancel["receipt_id"])
        assert sent_count(ses_env) == before, "nothing leaves before the hold"
        oid = sent["result"]["outbox_id"]
        for _ in range(200):
            box = (await call(client, "email_outbox", target="ses"))["result"]
            m = next(x for x in box["messages"] if x["id"] == oid)
            if m["state"] == "sent":
                break
            await anyio.sleep(0.05)
        assert m["state"] == "sent" and m["provider_message_id"] and "SES accepted" in m["reply"]
        after = sent_count(ses_env)
        assert after > before
        await anyio.sleep(0.6)
        assert sent_count(ses_env) == after, "sent once"
        states = {x["id"]: x["state"] for x in box["messages"]}
        assert states[cancel["result"]["outbox_id"]] == "cancelled"
        rs = (await call(client, "receipts", limit=100))["receipts"]
        assert any(r["outcome"] == "delivered" and r["args"]["provider_message_id"] == m["provider_message_id"] for r in rs)
        import json
        assert SECRET not in json.dumps(rs) and KEY not in json.dumps(rs)


async def test_ses_refuses_credentials_of_another_account(tmp_path: Path, ses_env: str) -> None:
    async with connect(ses_config(tmp_path, ses_env, account="111111111111")) as client:
        text = await refused(client, "email_send", target="ses", to=["ops@example.com"], subject="s", body="b")
        assert "123456789012" in text and "111111111111" in text and "refusing" in text
        assert (await call(client, "email_outbox", target="ses"))["result"]["messages"] == []


def test_check_shows_allow_list_hold_and_rate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from safe_mcp.faces.cli import main

    cfg = write_config(tmp_path, """
[targets.mail]
kind = "smtp"
access = "read-write"
host = "smtp.example.com"
port = 587
username = "agent@example.com"
password = "env:NOT_NEEDED_FOR_CHECK"
from = "agent@example.com"
allow_recipients = ["*@example.com"]
hold_s = 120
messages_per_hour = 30
""")
    assert main(["check", "--config", str(cfg)]) == 0
    out = capsys.readouterr().out
    import re
    assert re.search(r"allow_recipients:\s*\*@example\.com", out) and re.search(r"hold_s:\s*120s", out)
    assert re.search(r"messages_per_hour:\s*30", out) and "SMTP smtp.example.com:587 (tls starttls)" in out
    assert "cancel with undo while held" in out


@pytest.mark.parametrize(("body", "says"), [
    ('host = "smtp.example.com"\ntls = "none"', "loopback"),
    ('host = "127.0.0.1"\nusername = "u"\npassword = "hunter22"', "secrets may not be written"),
    ('host = "127.0.0.1"\nbogus = 1', "bogus"),
    ('host = "127.0.0.1"\nallow_recipients = []', "allow_recipients"),
])
def test_config_mistakes_are_named(tmp_path: Path, body: str, says: str) -> None:
    from safe_mcp.trust.config import load_config

    text = "[targets.mail]\nkind = \"smtp\"\nfrom = \"a@example.com\"\n" + body + "\n"
    if "allow_recipients" not in body:
        text += 'allow_recipients = ["*@example.com"]\n'
    with pytest.raises(ConfigError) as exc:
        load_config(write_config(tmp_path, text))
    assert says in str(exc.value)
    assert "hunter22" not in str(exc.value)


def test_config_schema_lists_the_mail_kinds() -> None:
    from safe_mcp.trust.schema import config_schema

    kinds = {v["properties"]["kind"]["const"] for v in
             config_schema()["properties"]["targets"]["additionalProperties"]["oneOf"]}
    assert {"smtp", "ses"} <= kinds
