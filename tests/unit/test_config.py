"""Config errors name the file, the key and the fix; secrets are references only."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support import write_config

from safe_mcp.errors import ConfigError
from safe_mcp.trust.config import Access, load_config
from safe_mcp.trust.schema import config_schema

ROOT = Path(__file__).resolve().parents[2]


def test_access_defaults_to_read_only(tmp_path: Path) -> None:
    cfg = load_config(write_config(tmp_path, '[targets.db]\nkind = "sqlite"\npath = "x.db"\n'))
    assert cfg.targets["db"].access is Access.READ_ONLY


def test_target_limits_override_global_limits(tmp_path: Path) -> None:
    cfg = load_config(write_config(tmp_path, """
        [targets.db]
        kind = "sqlite"
        path = "x.db"
        limits = { rows_affected = 3 }
        [limits]
        rows_returned = 7
    """))
    assert cfg.targets["db"].limits.rows_affected == 3
    assert cfg.targets["db"].limits.rows_returned == 7


@pytest.mark.parametrize(("body", "key", "hint"), [
    ('[targets.db]\nkind = "sqlite"\npath = "x.db"\nacess = "read-write"\n', "targets.db.acess", "valid keys here"),
    ('[targets.db]\nkind = "sqlite"\npath = "x.db"\naccess = "admin"\n', "targets.db.access", "read-only"),
    ('[targets.db]\nkind = "sqlite"\n', "targets.db.path", "add path"),
    ('[targets.db]\nkind = "oracle"\n', "targets.db.kind", "pip install"),
    ('[targets.db]\nkind = "sqlite"\npath = "x"\n[confirm]\ndestructive = "maybe"\n', "confirm.destructive", "agent"),
    ('[targets.db]\nkind = "sqlite"\npath = "x"\n[limitz]\n', "limitz", "spelling"),
    ("", "targets", "[targets.NAME]"),
])
def test_bad_config_names_file_key_and_fix(tmp_path: Path, body: str, key: str, hint: str) -> None:
    path = write_config(tmp_path, body)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    text = str(err.value)
    assert str(path) in text and key in text and hint in text


def test_not_toml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write_config(tmp_path, "[targets.db\n"))
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "absent.toml")


def test_password_in_a_url_is_refused(tmp_path: Path) -> None:
    path = write_config(tmp_path, '[targets.db]\nkind = "sqlite"\npath = "sqlite://u:hunter22@host/x"\n')
    with pytest.raises(ConfigError, match="contains a password") as err:
        load_config(path)
    assert "hunter22" not in str(err.value)


def test_cli_reports_config_errors_with_exit_2_and_no_traceback(tmp_path: Path) -> None:
    path = write_config(tmp_path, '[targets.db]\nkind = "sqlite"\npath = "x.db"\nbogus = 1\n')
    for command in (["check"], ["serve"], ["receipts", "verify"]):
        r = subprocess.run([sys.executable, "-m", "safe_mcp", *command, "--config", str(path)],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 2, (command, r.stderr)
        assert "targets.db.bogus" in r.stderr and "Traceback" not in r.stderr


def test_config_path_comes_from_environment(tmp_path: Path) -> None:
    path = write_config(tmp_path, '[targets.db]\nkind = "sqlite"\npath = "x.db"\n', name="elsewhere.toml")
    r = subprocess.run([sys.executable, "-m", "safe_mcp", "check", "--offline"], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "SAFE_MCP_CONFIG": str(path)}, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "target db (sqlite, read-only)" in r.stdout


def test_published_schema_is_current() -> None:
    published = json.loads((ROOT / "config" / "safe-mcp.schema.json").read_text())
    assert published == config_schema(), "regenerate: safe-mcp config-schema > config/safe-mcp.schema.json"


def test_example_configs_validate_against_schema_and_load() -> None:
    import tomllib

    import jsonschema

    schema = config_schema()
    for name in ("demo.toml", "staging.example.toml"):
        path = ROOT / "config" / name
        jsonschema.validate(tomllib.loads(path.read_text()), schema)
    load_config(ROOT / "config" / "demo.toml")


def test_demo_config_file_matches_the_demo() -> None:
    from safe_mcp.faces.demo import DEMO_CONFIG

    assert (ROOT / "config" / "demo.toml").read_text() == DEMO_CONFIG


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://x/y", "javascript:alert(1)", "hooks.slack.com/x"])
def test_notify_url_must_be_http(tmp_path: Path, url: str) -> None:
    path = write_config(tmp_path, f'[targets.db]\nkind = "sqlite"\npath = "x.db"\n[approvals]\nnotify_url = "{url}"\n')
    with pytest.raises(ConfigError, match=r"approvals\.notify_url"):
        load_config(path)
