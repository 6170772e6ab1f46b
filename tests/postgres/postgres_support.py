"""A real PostgreSQL for the adapter tests: one fresh database and roles per session, dropped at the end."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from support import require_service, write_config

HOST, PORT = "127.0.0.1", 5432
SECRET = "pw-" + uuid.uuid4().hex  # the restricted role's password: must never appear anywhere

SCHEMA = """
CREATE TABLE items (id serial PRIMARY KEY, name text NOT NULL, qty int, price numeric(10,2),
                    tags text[], meta jsonb, at timestamptz DEFAULT '2024-01-01 00:00:00+00');
INSERT INTO items (name, qty, price, tags, meta)
  SELECT 'item ' || g, g, g * 1.25, ARRAY['a', 'b''s'], jsonb_build_object('n', g) FROM generate_series(1, 20) g;
CREATE TABLE nokey (a int, b text);
INSERT INTO nokey VALUES (1, 'x'), (2, 'y');
CREATE TABLE parent (id int PRIMARY KEY);
CREATE TABLE child (id int PRIMARY KEY, parent_id int REFERENCES parent ON DELETE CASCADE);
INSERT INTO parent VALUES (1), (2); INSERT INTO child VALUES (1, 1), (2, 2);
CREATE TABLE big (id int PRIMARY KEY, v int);
CREATE FUNCTION evil() RETURNS int LANGUAGE sql AS 'DELETE FROM items RETURNING 1';
CREATE SCHEMA cron;
CREATE FUNCTION cron.schedule(text, text) RETURNS int LANGUAGE sql AS 'SELECT 1';
"""


@dataclass
class Pg:
    db: str
    writer: str  # SELECT/INSERT/UPDATE/DELETE on the test tables
    reader: str  # SELECT only
    marker: str  # a file no statement may create

    def dsn(self, user: str = "postgres", db: str | None = None) -> str:
        return f"postgresql://{user}@{HOST}:{PORT}/{db or self.db}"

    def connect(self, **kw: Any) -> Any:
        import psycopg

        return psycopg.connect(self.dsn(), autocommit=True, **kw)

    def config(self, directory: Path, extra: str = "", **target_extra: str) -> Path:
        more = "".join(f"{k} = {v}\n" for k, v in target_extra.items())
        text = ""
        for name, user, access in (("su_ro", "postgres", "read-only"), ("su_rw", "postgres", "read-write"),
                                   ("r_ro", self.writer, "read-only"), ("r_rw", self.writer, "read-write"),
                                   ("reader", self.reader, "read-only")):
            text += (f'[targets.{name}]\nkind = "postgres"\ndsn = "{self.dsn(user)}"\naccess = "{access}"\n'
                     f"statement_timeout_ms = 2000\nlock_timeout_ms = 500\npool_min_size = 0\n{more}")
            if user == self.writer:
                text += 'password = "env:SAFE_MCP_TEST_PG_PASSWORD"\n'
            text += "\n"
        text += f'[confirm]\nmin_delay_s = 0.1\n[state]\npath = "{directory / "state"}"\n{extra}'
        return write_config(directory, text)


def journal_ddl() -> str:
    from safe_mcp_postgres.journal import _DDL

    return _DDL


@pytest.fixture(scope="session")
def pg() -> Iterator[Pg]:
    require_service("postgresql", HOST, PORT)
    import psycopg

    tag = uuid.uuid4().hex[:10]
    p = Pg(db=f"safe_mcp_t_{tag}", writer=f"safe_mcp_w_{tag}", reader=f"safe_mcp_r_{tag}",
           marker=f"/tmp/safe_mcp_pwned_{tag}")
    with psycopg.connect(f"postgresql://postgres@{HOST}:{PORT}/test", autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{p.db}"')
        admin.execute(f"CREATE ROLE \"{p.writer}\" LOGIN PASSWORD '{SECRET}'")
        admin.execute(f'CREATE ROLE "{p.reader}" LOGIN')
    try:
        with p.connect() as conn:
            conn.execute(SCHEMA)
            for role in (p.writer, p.reader):
                conn.execute(f'REVOKE ALL ON SCHEMA public FROM "{role}"')
                conn.execute(f'GRANT USAGE ON SCHEMA public TO "{role}"')
                conn.execute(f'GRANT SELECT ON items, nokey, parent, child, big TO "{role}"')
            conn.execute(f'GRANT INSERT, UPDATE, DELETE ON items, nokey, parent, child, big TO "{p.writer}"')
            conn.execute(f'GRANT USAGE ON SEQUENCE items_id_seq TO "{p.writer}"')
            # What a human does once for a restricted role: give it safe-mcp's journal schema.
            conn.execute(f'CREATE SCHEMA _safe_mcp AUTHORIZATION "{p.writer}"')
            conn.execute(f'SET ROLE "{p.writer}"')
            conn.execute(journal_ddl())
            conn.execute("RESET ROLE")
        yield p
    finally:
        with psycopg.connect(f"postgresql://postgres@{HOST}:{PORT}/test", autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{p.db}" WITH (FORCE)')
            admin.execute(f'DROP ROLE IF EXISTS "{p.writer}"')
            admin.execute(f'DROP ROLE IF EXISTS "{p.reader}"')
        Path(p.marker).unlink(missing_ok=True)


@pytest.fixture(autouse=True)
def _password_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAFE_MCP_TEST_PG_PASSWORD", SECRET)
