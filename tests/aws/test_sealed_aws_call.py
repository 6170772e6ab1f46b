"""A member botocore marks sensitive (a secret's value) in a call that waits for confirmation is written to no
state file and no receipt, and the confirmed call still sends it to AWS as the agent gave it."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aws_support import aws_config, unique
from support import call, connect

pytestmark = pytest.mark.anyio

VALUE = "s3cr3t-value-7f6e5d4c"


async def test_a_sensitive_member_of_a_pending_call_is_written_nowhere(tmp_path: Path, moto_endpoint: str,
                                                                       boto: Callable[[str], Any]) -> None:
    cfg = aws_config(tmp_path, moto_endpoint, tail='irreversible = "agent"')
    name = unique("sealed")
    async with connect(cfg, "stdio") as c:
        pending = await call(c, "aws_call", target="cloud", service="secretsmanager", operation="CreateSecret",
                             params={"Name": name, "SecretString": VALUE})
        assert pending["status"] == "pending" and pending["effect"] == "irreversible", pending
        assert VALUE not in json.dumps(pending)
        held = [f.name for f in (tmp_path / ".safe-mcp").rglob("*") if f.is_file() and VALUE.encode() in f.read_bytes()]
        assert held == [], f"the secret's value was written to {held}"
        done = await call(c, "confirm", action_id=pending["pending"]["action_id"])
        assert done["status"] == "ok", done
        assert VALUE not in json.dumps(done)
    assert boto("secretsmanager").get_secret_value(SecretId=name)["SecretString"] == VALUE
    held = [f.name for f in (tmp_path / ".safe-mcp").rglob("*") if f.is_file() and VALUE.encode() in f.read_bytes()]
    assert held == [], f"the secret's value was written to {held}"
    export = subprocess.run([sys.executable, "-m", "safe_mcp", "receipts", "export", "--config", str(cfg)],
                            capture_output=True, text=True, timeout=60)
    assert export.returncode == 0 and "CreateSecret" in export.stdout and VALUE not in export.stdout
