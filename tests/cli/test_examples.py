"""The example configs in config/ are valid as shipped, and the read-only role SQL beside the staging
example really yields a role that cannot write (checked on the machine's PostgreSQL)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from helpers import ROOT, run
from support import require, require_service

EXAMPLES = sorted(p for p in (ROOT / "config").glob("*.toml") if "org-policy" not in p.name)


def test_there_are_examples_for_every_kind() -> None:
    kinds = " ".join(p.read_text() for p in EXAMPLES)
    for kind in ("sqlite", "postgres", "aws", "smtp"):
        assert f'kind = "{kind}"' in kinds, kind
    assert (ROOT / "config" / "staging-readonly-role.sql").exists()


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_every_example_config_passes_check_offline(example: Path) -> None:
    r = run("check", "--offline", "--config", str(example))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"config ok: {example}")
    j = run("check", "--offline", "--format", "json", "--config", str(example))
    assert j.returncode == 0, j.stderr


def test_the_org_policy_example_applies_to_the_demo() -> None:
    r = run("check", "--offline", "--config", str(ROOT / "config" / "demo.toml"),
            "--policy", str(ROOT / "config" / "org-policy.example.toml"))
    assert r.returncode == 0, r.stderr


def test_the_read_only_role_sql_makes_a_role_that_cannot_write(tmp_path: Path) -> None:
    require_service("PostgreSQL", "127.0.0.1", 5432)
    try:
        import psycopg
    except ImportError:
        require(False, "psycopg is not installed")
    tag = uuid.uuid4().hex[:8]
    db, role = f"ux_example_{tag}", f"ux_reader_{tag}"
    sql = ((ROOT / "config" / "staging-readonly-role.sql").read_text()
           .replace("safe_mcp_reader", role).replace("DATABASE app", f"DATABASE {db}"))
    admin = psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True)
    try:
        admin.execute(f"CREATE DATABASE {db}")
        with psycopg.connect(f"postgresql://postgres@127.0.0.1:5432/{db}", autocommit=True) as owner:
            owner.execute("CREATE TABLE orders (id int PRIMARY KEY, status text)")
            owner.execute(sql)
            owner.execute("CREATE TABLE later (id int PRIMARY KEY)")  # default privileges cover it
        cfg = tmp_path / "safe-mcp.toml"
        cfg.write_text(f'[targets.app]\nkind = "postgres"\ndsn = "postgresql://{role}@127.0.0.1:5432/{db}"\n'
                       "connect_timeout_s = 5\npool_min_size = 0\n")
        r = run("check", "--format", "json", "--config", str(cfg))
        assert r.returncode == 0, r.stderr
        import json

        audit = json.loads(r.stdout)["targets"][0]["audit"]
        assert audit["can_write"] is False, audit
        with psycopg.connect(f"postgresql://{role}@127.0.0.1:5432/{db}", autocommit=True) as reader:
            reader.execute("SELECT count(*) FROM orders").fetchone()
            reader.execute("SELECT count(*) FROM later").fetchone()
            for statement in ("BEGIN READ WRITE; INSERT INTO orders VALUES (1, 'x'); COMMIT",
                              "BEGIN READ WRITE; CREATE TABLE mine (id int); COMMIT",
                              "BEGIN READ WRITE; CREATE TEMP TABLE t (id int); COMMIT"):
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    reader.execute(statement)
                reader.execute("ROLLBACK")
        with psycopg.connect(f"postgresql://postgres@127.0.0.1:5432/{db}") as owner:
            assert owner.execute("SELECT count(*) FROM orders").fetchone() == (0,), "the target is unchanged"
    finally:
        admin.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
        admin.execute(f"DROP ROLE IF EXISTS {role}")
        admin.close()
