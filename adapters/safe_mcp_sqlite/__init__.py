"""The embedded SQLite adapter: safe-mcp's default target and the model for new adapters."""

from __future__ import annotations

from safe_mcp_sqlite.adapter import SqliteAdapter, SqliteSettings

__all__ = ["SqliteAdapter", "SqliteSettings"]
