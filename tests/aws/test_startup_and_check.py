"""Start-up cost and the blast-radius inventory: boto3 is loaded only when an aws target is called."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from aws_support import aws_config
from support import write_config

from safe_mcp.faces.cli import main


def imported_by_serve(config: Path) -> set[str]:
    """Modules `safe-mcp serve` imports before it has a client (stdin closed: it starts, then exits)."""
    out = subprocess.run([sys.executable, "-X", "importtime", "-m", "safe_mcp", "serve", "--config", str(config)],
                         stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    names = {line.rsplit("|", 1)[-1].strip() for line in out.stderr.splitlines() if line.startswith("import time:")}
    assert "mcp.server" in names, "serve did not get as far as building the server"
    return names


def test_serve_without_aws_target_never_imports_boto3(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, """
        [targets.shop]
        kind = "sqlite"
        path = "shop.db"
        """)
    names = imported_by_serve(cfg)
    assert not {n for n in names if n.split(".")[0] in {"boto3", "botocore", "safe_mcp_aws"}}


def test_serve_with_aws_target_defers_boto3_to_the_first_call(tmp_path: Path) -> None:
    names = imported_by_serve(aws_config(tmp_path, "http://127.0.0.1:9"))
    assert "safe_mcp_aws.settings" in names  # the config's part; the adapter itself waits for the first call too
    assert "safe_mcp_aws.adapter" not in names
    assert not {n for n in names if n.split(".")[0] in {"boto3", "botocore"}}


def test_check_lists_services_buckets_and_effects(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = aws_config(tmp_path, "http://127.0.0.1:9",
                     extra='services = ["s3", "ec2", "logs"]\nbuckets = ["acme-staging-*"]')
    assert main(["check", "--config", str(cfg), "--offline"]) == 0
    text = capsys.readouterr().out
    assert "target cloud (aws, read-write)" in text
    assert "services:     s3, ec2, logs" in text and "buckets:      acme-staging-*" in text
    assert "AWS account 123456789012, region us-east-1" in text
    assert "forbidden:    refused" in text and "destructive:  needs agent confirmation" in text
    assert main(["check", "--config", str(cfg), "--format", "json", "--offline"]) == 0
    inv = json.loads(capsys.readouterr().out)
    target = inv["targets"][0]
    assert target["details"]["services"] == "s3, ec2, logs" and target["credentials"] == [
        "access_key_id", "secret_access_key"]
    assert target["effects"]["read"] == "allowed"
