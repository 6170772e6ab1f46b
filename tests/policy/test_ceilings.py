"""Org policy ceilings: a config asking for more refuses to start, naming the key, the ceiling and the policy."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from support import call, refused, write_config

from safe_mcp.errors import ConfigError
from safe_mcp.trust.orgpolicy import effective_config, sql_functions

pytestmark = pytest.mark.anyio

SQLITE = '[targets.shop]\nkind = "sqlite"\npath = "shop.db"\n'


def _refusal(tmp_path: Path, config: str, policy: str) -> str:
    cfg = write_config(tmp_path, config)
    pol = write_config(tmp_path, policy, name="org.toml")
    with pytest.raises(ConfigError) as info:
        effective_config(cfg, str(pol))
    text = str(info.value)
    assert str(pol) in text, text
    return text


@pytest.mark.parametrize(("config", "policy", "key", "ceiling"), [
    (SQLITE + 'access = "read-write"\n', '[max_access]\n"*" = "read-only"\n', "targets.shop.access", 'max_access."*"'),
    (SQLITE + 'access = "read-write"\n', '[max_access]\n"*" = "read-write"\nsqlite = "read-only"\n',
     "targets.shop.access", "max_access.sqlite"),
    (SQLITE + 'access = "read-write"\n', '[max_access]\nsqlite = "read-write"\n[max_access.names]\n"sh*" = "read-only"\n',
     "targets.shop.access", "max_access.names"),
    (SQLITE + '[confirm]\ndestructive = "none"\n', '[min_confirm]\ndestructive = "agent"\n', "confirm.destructive",
     "min_confirm.destructive"),
    (SQLITE + '[limits]\nrows_affected = 5000\n', '[max_limits]\nrows_affected = 1000\n', "limits.rows_affected",
     "max_limits.rows_affected"),
    (SQLITE + '[targets.shop.limits]\nrows_returned = 900\n', '[max_limits]\nrows_returned = 100\n',
     "targets.shop.limits.rows_returned", "max_limits.rows_returned"),
    ('[targets.pg]\nkind = "postgres"\ndsn = "postgresql://app@db.prod.example:5432/app"\n',
     '[allow]\nhosts = ["*.staging.internal"]\n', "targets.pg.dsn", "allow.hosts"),
    ('[targets.s3]\nkind = "aws"\nregion = "eu-west-1"\naccount = "999999999999"\n',
     '[allow]\naws_accounts = ["123456789012"]\n', "targets.s3.account", "allow.aws_accounts"),
    ('[targets.s3]\nkind = "aws"\nregion = "us-east-1"\naccount = "123456789012"\n',
     '[allow]\nregions = ["eu-*"]\n', "targets.s3.region", "allow.regions"),
    ('[targets.mail]\nkind = "smtp"\nhost = "smtp.staging.internal"\nfrom = "a@example.com"\n'
     'allow_recipients = ["*@gmail.com"]\n',
     '[allow]\nrecipients = ["*@example.com"]\n', "targets.mail.allow_recipients", "allow.recipients"),
    ('[targets.mail]\nkind = "smtp"\nhost = "smtp.evil.example"\nfrom = "a@example.com"\n'
     'allow_recipients = ["*@example.com"]\n', '[allow]\nhosts = ["*.staging.internal"]\n', "targets.mail.host",
     "allow.hosts"),
    (SQLITE + '[server]\nauth = "none"\n', '[network]\nrequire_tokens = true\n', "server.auth", "network.require_tokens"),
])
def test_each_ceiling_refuses_with_key_ceiling_and_file(tmp_path: Path, config: str, policy: str, key: str,
                                                       ceiling: str) -> None:
    text = _refusal(tmp_path, config, policy)
    assert key in text and ceiling in text, text


def test_defaults_are_clamped_and_provenance_says_so(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, SQLITE + 'access = "read-write"\n[limits]\nrows_returned = 50\n')
    pol = write_config(tmp_path, '[min_confirm]\nwrite = "agent"\n[max_limits]\nrows_affected = 10\n', name="org.toml")
    config = effective_config(cfg, str(pol))
    assert config.confirm.write.value == "agent"
    assert config.targets["shop"].limits.rows_affected == 10 and config.targets["shop"].limits.rows_returned == 50
    prov = config.org_policy["provenance"]
    assert prov["limits.rows_returned"] == "config" and "max_limits.rows_affected" in prov["limits.rows_affected"]
    assert "min_confirm.write" in prov["confirm.write"]
    out = subprocess.run([sys.executable, "-m", "safe_mcp", "check", "--offline", "--format", "md", "--config", str(cfg),
                          "--policy", str(pol)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "min_confirm.write" in out.stdout and str(pol) in out.stdout


def test_bad_policies_fail_closed(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, SQLITE)
    for body, needle in [("", "no ceilings"), ("[max_access\n", "not valid TOML"), ("[bogus]\nx = 1\n", "bogus"),
                         ("[max_limits]\nrows_eaten = 3\n", "max_limits.rows_eaten")]:
        pol = write_config(tmp_path, body, name="org.toml")
        r = subprocess.run([sys.executable, "-m", "safe_mcp", "check", "--offline", "--config", str(cfg), "--policy", str(pol)],
                           capture_output=True, text=True)
        assert r.returncode == 2 and needle in r.stderr and str(pol) in r.stderr, (body, r.stderr)
    r = subprocess.run([sys.executable, "-m", "safe_mcp", "check", "--config", str(cfg), "--policy", str(tmp_path / "no")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "cannot read the org policy" in r.stderr


def test_serve_honours_the_policy(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, SQLITE + 'access = "read-write"\n')
    pol = write_config(tmp_path, '[max_access]\n"*" = "read-only"\n', name="org.toml")
    r = subprocess.run([sys.executable, "-m", "safe_mcp", "serve", "--config", str(cfg)], capture_output=True, text=True,
                       env={"SAFE_MCP_POLICY": str(pol), "PATH": ""}, timeout=60)
    assert r.returncode == 2 and "targets.shop.access" in r.stderr and str(pol) in r.stderr


def test_forbidden_sql_functions_are_found_past_quoting_and_comments() -> None:
    assert sql_functions('SELECT "Upper"(x), lower /* c */ (y) FROM t WHERE z = \'random(\'') == {"upper", "lower"}
    assert sql_functions("SELECT main.abs(1) -- hex(\n") == {"abs"}
    assert sql_functions('SELECT U&"\\0061bs"(1)') is None


async def test_org_forbid_reaches_the_gate(tmp_path: Path) -> None:
    import sqlite3

    from mcp import Client

    from safe_mcp.faces.server import build_server
    from safe_mcp.gate.runtime import Runtime
    db = sqlite3.connect(tmp_path / "shop.db")
    db.execute("CREATE TABLE t (x TEXT)")
    db.execute("INSERT INTO t VALUES ('a')")
    db.commit()
    db.close()
    cfg = write_config(tmp_path, SQLITE + 'access = "read-write"\n')
    pol = write_config(tmp_path, '[forbid]\nsql = ["hex", "main.upper"]\n', name="org.toml")
    rt = Runtime(effective_config(cfg, str(pol)))
    async with Client(build_server(rt)) as client:
        assert (await call(client, "sql_query", target="shop", sql="SELECT lower(x) FROM t"))["rows"] == [["a"]]
        text = await refused(client, "sql_query", target="shop", sql='SELECT "HEX"(x) FROM t')
        assert "org policy forbids the SQL function hex" in text and str(pol) in text
        text = await refused(client, "sql_execute", target="shop", sql="UPDATE t SET x = upper(x)")
        assert "upper" in text
        last = (await call(client, "receipts", limit=1))["receipts"][0]
        assert last["outcome"] == "refused" and last["policy_digest"] == rt.config.policy_digest()
