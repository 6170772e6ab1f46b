"""The PostgreSQL adapter: classification by pglast, enforcement by the engine, before-images and undo."""

from __future__ import annotations

from safe_mcp_postgres.adapter import PostgresAdapter, PostgresSettings

__all__ = ["PostgresAdapter", "PostgresSettings"]
