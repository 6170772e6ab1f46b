"""Run the real `safe-mcp` command in a subprocess, as a user or a CI job would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from safe_mcp.faces.demo import create_shop

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
        timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "safe_mcp", *args], capture_output=True, text=True, timeout=timeout,
                          cwd=cwd, env={**os.environ, "COLUMNS": "100", **(env or {})}, stdin=subprocess.DEVNULL)


def shop(directory: Path, extra: str = "") -> Path:
    """The demo config with its shop.db in `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    create_shop(directory / "shop.db")
    cfg = directory / "safe-mcp.toml"
    cfg.write_text((ROOT / "config" / "demo.toml").read_text() + extra, encoding="utf-8")
    return cfg
