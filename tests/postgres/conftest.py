"""Fixtures of the postgres tests (they live in postgres_support.py, which test modules import by that name)."""

from postgres_support import _password_env, pg  # noqa: F401
