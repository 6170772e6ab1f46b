"""The config judges a plain PostgreSQL dsn without importing psycopg; on every dsn it judges, libpq agrees."""

from __future__ import annotations

import itertools
import random

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict
from safe_mcp_postgres.settings import _KNOWN, plain_dsn, where


def libpq(dsn: str) -> dict[str, str] | None:
    try:
        return {k: str(v) for k, v in conninfo_to_dict(dsn).items()}
    except psycopg.ProgrammingError:
        return None


def test_every_keyword_the_fast_path_knows_is_one_the_installed_libpq_knows() -> None:
    libpq_keys = {o.keyword.decode() for o in psycopg.pq.Conninfo.get_defaults()}
    assert libpq_keys >= _KNOWN, sorted(_KNOWN - libpq_keys)


PIECES_URI = ["postgresql://", "postgres://", "postgresql:/", "postgresq://"]
USERS = ["", "u@", "app_user@", "u:pw@", "@", "u%40x@", "u@@"]
HOSTS = ["", "h", "127.0.0.1", "db.example-1.com", "[::1]", "h1,h2", "h%2F", "h_1"]
PORTS = ["", ":5432", ":", ":x", ":5432,5433"]
DBS = ["", "/", "/db", "/my-db.1", "/d%20b", "/a/b"]
QUERIES = ["", "?", "?sslmode=require", "?sslmode=", "?password=x", "?application_name=a&connect_timeout=3",
           "?bogus=1", "?sslmode=require&", "?ssl=true", "?options=-c%20x", "?host=other", "?a", "?sslmode=a=b",
           "?requirepeer=postgres&password="]
PAIRS = ["", "host=h", "host = h", "host=h port=5432", "dbname=db user=u", "password=x", "host=h password=",
         "host='h'", "host=h\\ x", "host='a b' password='x'", "bogus=1", "host=h  sslmode=disable  ", "host",
         "host=", "=h", "host==h", "HOST=h", "host=h\tport=1", "options=-cx=y", "host=h passfile=/p",
         "host=a=b", "host=h,h2 port=1,2", " ", "\n", "host=é"]


def corpus() -> list[str]:
    uris = ["".join(p) for p in itertools.product(PIECES_URI[:2], USERS, HOSTS, PORTS, DBS, QUERIES)]
    rng = random.Random(17)
    pairs = [" ".join(rng.sample(PAIRS, k)) for k in (1, 2, 3) for _ in range(400)]
    return uris[::3] + [u for u in uris if "?" in u][::5] + PAIRS + pairs + ["".join(p) for p in PIECES_URI[2:]]


@pytest.mark.parametrize("chunk", range(4))
def test_a_plain_dsn_parses_exactly_as_libpq_parses_it_and_anything_else_goes_to_libpq(chunk: int) -> None:
    dsns = corpus()[chunk::4]
    judged = 0
    for dsn in dsns:
        fast = plain_dsn(dsn)
        if fast is None:
            continue
        judged += 1
        assert fast == libpq(dsn), dsn  # and so: valid, and a password seen exactly when libpq sees one
        assert where(dsn).count("@") == 1
    assert judged > 200  # the common forms do take the fast path


@pytest.mark.parametrize("dsn", ["postgresql://u@h:5/db", "host=h port=5 user=u dbname=db",
                                 "postgresql://u@h:5/db?options=-c%20a", "host='h' port=5 user=u dbname=db"])
def test_where_names_the_same_place_either_way(dsn: str) -> None:
    from safe_mcp_postgres.engine import where as libpq_where

    assert where(dsn) == libpq_where(dsn) == "u@h:5/db"
