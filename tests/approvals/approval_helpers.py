"""Shared set-up for the approval tests: a shop with a human-approved effect and enrolled approvers."""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pyotp
from support import write_config

from safe_mcp.faces.demo import create_shop

# No OS keyring on test machines: the documented key-file fallback is what these tests exercise.
ENV = {**os.environ, "PYTHON_KEYRING_BACKEND": "keyring.backends.fail.Keyring"}
os.environ["PYTHON_KEYRING_BACKEND"] = "keyring.backends.fail.Keyring"

IRREVERSIBLE = "ALTER TABLE orders ADD COLUMN note TEXT"

BASE = """
[targets.admin]
kind = "sqlite"
path = "shop.db"
access = "read-write"
{target_extra}

[confirm]
ttl_s = {ttl}
min_delay_s = 0
{confirm_extra}

[approvals]
{approvals_extra}
"""


def make(tmp_path: Path, ttl: int = 300, target_extra: str = "", confirm_extra: str = "",
         approvals_extra: str = "") -> Path:
    if not (tmp_path / "shop.db").exists():
        create_shop(tmp_path / "shop.db")
    return write_config(tmp_path, BASE.format(ttl=ttl, target_extra=target_extra, confirm_extra=confirm_extra,
                                              approvals_extra=approvals_extra))


def cli(cfg: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "safe_mcp", *args, "--config", str(cfg)], capture_output=True,
                          text=True, timeout=60, input=stdin if stdin is not None else "", env=ENV)


class Approver:
    """An enrolled approver with their authenticator: each code is for a fresh time step (codes are single use)."""

    def __init__(self, cfg: Path, name: str) -> None:
        r = cli(cfg, "approver", "add", name)
        assert r.returncode == 0, r.stderr
        self.name = name
        self.uri = re.search(r"otpauth://\S+", r.stdout).group(0)  # type: ignore[union-attr]
        self.totp = pyotp.TOTP(re.search(r"secret=([A-Z2-7]+)", self.uri).group(1))  # type: ignore[union-attr]
        self.output = r.stdout
        self._uses = 0

    def code(self) -> str:
        # ±1 step is accepted and a step is used once: at most two fresh codes per 30 s window.
        step = self._uses
        self._uses += 1
        assert step <= 1, "tests use at most two codes per approver"
        return self.totp.at(time.time() + step * self.totp.interval)

    def approve(self, cfg: Path, action_id: str, code: str | None = None) -> subprocess.CompletedProcess[str]:
        return cli(cfg, "approve", action_id, "--as", self.name, stdin=(code or self.code()) + "\n")

    def deny(self, cfg: Path, action_id: str, reason: str = "no") -> subprocess.CompletedProcess[str]:
        return cli(cfg, "deny", action_id, "--as", self.name, "--reason", reason, stdin=self.code() + "\n")


def columns(tmp_path: Path) -> list[str]:
    db = sqlite3.connect(tmp_path / "shop.db")
    try:
        return [r[1] for r in db.execute("PRAGMA table_info(orders)")]
    finally:
        db.close()


def receipts(tmp_path: Path, tool: str) -> list[dict[str, object]]:
    import json

    from support import ledger_rows

    bodies = [json.loads(str(b)) for (b,) in ledger_rows(tmp_path / "safe-mcp.toml", "SELECT body FROM receipts ORDER BY seq")]
    return [b for b in bodies if b["tool"] == tool]
