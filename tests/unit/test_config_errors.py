"""Every config mistake is reported as file, key, problem and the fix that applies, and values are strict."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from support import write_config

from safe_mcp.errors import ConfigError
from safe_mcp.trust.config import Config, load_config

DB = '[targets.db]\nkind = "sqlite"\npath = "x.db"\n'
PG = '[targets.pg]\nkind = "postgres"\ndsn = "postgresql://app@db.internal:5432/app"\n'


def error(tmp_path: Path, body: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(write_config(tmp_path, body))
    return info.value


@pytest.mark.parametrize(("body", "key", "meant"), [
    (PG + 'acess = "read-write"\n', "targets.pg.acess", "access"),
    (PG + 'kinds = "postgres"\n', "targets.pg.kinds", "kind"),
    (PG + "limit = { rows_affected = 3 }\n", "targets.pg.limit", "limits"),
    (PG + "statement_timeout = 5\n", "targets.pg.statement_timeout", "statement_timeout_ms"),
    (DB + "acces = 'read-write'\n", "targets.db.acces", "access"),
    (DB + "limits = { rows_afected = 3 }\n", "targets.db.limits.rows_afected", "rows_affected"),
    (DB + "[limits]\nrow_returned = 5\n", "limits.row_returned", "rows_returned"),
    (DB + "[confirm]\ndestrutive = 'agent'\n", "confirm.destrutive", "destructive"),
    (DB + "[targt]\nx = 1\n", "targt", "targets"),
])
def test_unknown_key_suggests_the_closest_valid_one(tmp_path: Path, body: str, key: str, meant: str) -> None:
    e = error(tmp_path, body)
    assert e.key == key and e.problem == "unknown key"
    assert e.fix.startswith(f"did you mean {meant!r}?"), e.fix
    assert meant in e.fix.split("valid keys here: ")[1]


def test_a_target_lists_its_common_keys_too(tmp_path: Path) -> None:
    valid = error(tmp_path, PG + 'zzz = 1\n').fix.split("valid keys here: ")[1]
    for common in ("access", "kind", "limits", "trust_client_elicitation", "approvals_required", "dsn"):
        assert common in valid


@pytest.mark.parametrize("dsn", [
    "postgresql://app@db.internal/app?password=hunter22",
    "postgresql://app@db.internal/app?sslmode=require&password=hunter22",
    "host=db.internal user=app password=hunter22",
    "postgresql://app:hunter22@db.internal/app",
])
def test_a_password_in_a_dsn_gets_one_message_and_the_right_fix(tmp_path: Path, dsn: str) -> None:
    e = error(tmp_path, f'[targets.pg]\nkind = "postgres"\ndsn = "{dsn}"\n')
    assert e.key == "targets.pg.dsn"
    assert e.problem == "this URL contains a password"
    assert e.fix == 'remove it from the URL and set password = "keyring:NAME" or "env:VAR"'
    assert "hunter22" not in str(e) and "value error" not in str(e).lower() and "schema" not in str(e)


@pytest.mark.parametrize(("body", "key", "expected", "fix"), [
    (DB + '[limits]\nrows_returned = "500"\n', "limits.rows_returned", "an integer", "rows_returned = 500"),
    (DB + "limits = { rows_affected = '3' }\n", "targets.db.limits.rows_affected", "an integer", "rows_affected = 3"),
    (DB + "[limits]\nrows_affected = 2.5\n", "limits.rows_affected", "an integer", ""),
    (DB + "[limits]\nrows_affected = true\n", "limits.rows_affected", "an integer", ""),
    (DB + '[confirm]\nttl_s = "300"\n', "confirm.ttl_s", "an integer", "ttl_s = 300"),
    (DB + '[confirm]\nmin_delay_s = "2"\n', "confirm.min_delay_s", "a number", "min_delay_s = 2"),
    (DB + '[confirm]\napprovals_required = "2"\n', "confirm.approvals_required", "an integer", "approvals_required = 2"),
    (DB + 'trust_client_elicitation = "true"\n', "targets.db.trust_client_elicitation", "true or false",
     "trust_client_elicitation = true"),
    (DB + "trust_client_elicitation = 1\n", "targets.db.trust_client_elicitation", "true or false", ""),
    (DB + '[approvals]\nport = "8766"\n', "approvals.port", "an integer", "port = 8766"),
    (DB + "[state]\npath = 5\n", "state.path", "a string in quotes", ""),
    (DB + '[server]\nmax_request_bytes = "4096"\n', "server.max_request_bytes", "an integer", "max_request_bytes = 4096"),
    (DB + '[breaker]\nrefusals = "10"\n', "breaker.refusals", "an integer", "refusals = 10"),
])
def test_config_values_are_strict(tmp_path: Path, body: str, key: str, expected: str, fix: str) -> None:
    e = error(tmp_path, body)
    assert e.key == key, str(e)
    assert e.problem.startswith(f"expected {expected}, got"), e.problem
    assert fix in e.fix and e.fix.startswith(f"write it as {expected}")


def test_strict_still_takes_what_toml_gives(tmp_path: Path) -> None:
    cfg: Config = load_config(write_config(tmp_path, DB + """
        access = "read-write"
        trust_client_elicitation = true
        limits = { rows_affected = 3 }
        [confirm]
        destructive = "human"
        min_delay_s = 1
        ttl_s = 60
        approvals_required = { irreversible = 2 }
        [server]
        auth = "none"
    """))
    assert cfg.targets["db"].access.value == "read-write" and cfg.confirm.min_delay_s == 1.0
    assert cfg.confirm.destructive.value == "human" and cfg.confirm.approvals_required == {"irreversible": 2}


@pytest.mark.parametrize(("body", "key", "fix"), [
    (DB + "[approvals]\nport = 99999\n", "approvals.port", "use a value <= 65535"),
    (DB + "[limits]\nrows_returned = 0\n", "limits.rows_returned", "use a value >= 1"),
    (DB + '[confirm]\ndestructive = "nobody"\n', "confirm.destructive", "use one of 'none', 'agent', 'human' or 'deny'"),
    (DB + '[server]\nauth = "tokens"\n', "server.auth", "use one of 'token', 'oidc' or 'none'"),
])
def test_other_mistakes_name_their_fix(tmp_path: Path, body: str, key: str, fix: str) -> None:
    e = error(tmp_path, body)
    assert e.key == key and e.fix == fix, str(e)


def test_the_cli_exits_2_with_the_message(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, DB + '[limits]\nrows_returned = "500"\n')
    r = subprocess.run([sys.executable, "-m", "safe_mcp", "check", "--offline", "--config", str(cfg)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert r.stderr.strip() == (f"safe-mcp: config error: {cfg}: limits.rows_returned: expected an integer, got a string "
                                "'500' (fix: write it as an integer, without quotes: rows_returned = 500)")
