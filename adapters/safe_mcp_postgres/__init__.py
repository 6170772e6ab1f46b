"""The PostgreSQL adapter: classification by pglast, enforcement by the engine, before-images and undo.

Importing this package imports neither psycopg nor pglast: `PostgresSettings` and `PostgresSpec` (what the config
needs) come from `safe_mcp_postgres.settings`; `PostgresAdapter` is imported when first named."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from safe_mcp_postgres.settings import PostgresSettings, PostgresSpec

if TYPE_CHECKING:
    from safe_mcp_postgres.adapter import PostgresAdapter

__all__ = ["PostgresAdapter", "PostgresSettings", "PostgresSpec"]


def __getattr__(name: str) -> Any:
    if name == "PostgresAdapter":
        from safe_mcp_postgres.adapter import PostgresAdapter

        return PostgresAdapter
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
