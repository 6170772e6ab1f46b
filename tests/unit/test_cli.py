"""The CLI a newcomer meets first: demo, check, client-config; and what serve imports at start."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from support import write_config

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "safe_mcp", *args], capture_output=True, text=True, timeout=120, cwd=cwd)


def test_demo_runs_to_the_end(tmp_path: Path) -> None:
    r = run("demo", "--dir", str(tmp_path / "demo"))
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    for expected in ("read-only", "status: pending", "rows it would delete: 12", "12 affected", "single use",
                     "12 rows restored", "ok: "):
        assert expected in out, expected
    assert (tmp_path / "demo" / "shop.db").exists()
    again = run("demo", "--dir", str(tmp_path / "demo"))
    assert again.returncode == 0, "the demo can be run twice"


def test_check_prints_the_blast_radius(tmp_path: Path) -> None:
    from safe_mcp.faces.demo import create_shop

    create_shop(tmp_path / "shop.db")
    cfg = write_config(tmp_path, (ROOT / "config" / "demo.toml").read_text())
    r = run("check", "--config", str(cfg))
    assert r.returncode == 0, r.stderr
    assert "target shop (sqlite, read-only)" in r.stdout
    assert "target shop_admin (sqlite, read-write)" in r.stdout
    assert "destructive:  needs agent confirmation" in r.stdout
    assert "forbidden:    refused" in r.stdout
    j = json.loads(run("check", "--format", "json", "--config", str(cfg)).stdout)
    assert {t["name"] for t in j["targets"]} == {"shop", "shop_admin"}


def test_client_config_is_pasteable_json(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, '[targets.db]\nkind = "sqlite"\npath = "x.db"\n')
    for client in ("cursor", "claude"):
        r = run("client-config", client, "--config", str(cfg))
        assert r.returncode == 0
        entry = json.loads(r.stdout)["mcpServers"]["safe-mcp"]
        assert entry["args"][-2:] == ["--config", str(cfg.resolve())]
        assert Path(entry["command"]).exists()


def test_usage_errors_exit_2() -> None:
    assert run("frobnicate").returncode == 2
    assert run("serve", "--transport", "carrier-pigeon").returncode == 2


def test_http_refuses_non_loopback_bind(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, '[targets.db]\nkind = "sqlite"\npath = "x.db"\n')
    r = run("serve", "--transport", "http", "--host", "0.0.0.0", "--config", str(cfg))
    assert r.returncode == 2 and "loopback" in r.stderr


@pytest.mark.sqlite_state  # with the state on PostgreSQL, psycopg is imported by design
def test_serving_sqlite_imports_no_heavy_driver(tmp_path: Path) -> None:
    """Clients spawn stdio servers often: only the adapters a config names are imported."""
    cfg = write_config(tmp_path, '[targets.db]\nkind = "sqlite"\npath = "x.db"\n')
    code = (
        "import sys\n"
        "from safe_mcp.trust.config import load_config\n"
        "from safe_mcp.gate.runtime import Runtime\n"
        "from safe_mcp.faces.server import build_server\n"
        f"build_server(Runtime(load_config({str(cfg)!r})))\n"
        "heavy = sorted(m for m in ('boto3', 'botocore', 'psycopg', 'psycopg_pool', 'pglast', 'keyring') if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == ""
