"""The embedded SQLite adapter: safe-mcp's default target and the model for new adapters.

`SqliteSettings` and `SqliteSpec` (what the config needs) come from `safe_mcp_sqlite.settings`;
`SqliteAdapter` is imported when first named, so that loading a config does not import the adapter."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from safe_mcp_sqlite.settings import SqliteSettings, SqliteSpec

if TYPE_CHECKING:
    from safe_mcp_sqlite.adapter import SqliteAdapter

__all__ = ["SqliteAdapter", "SqliteSettings", "SqliteSpec"]


def __getattr__(name: str) -> Any:
    if name == "SqliteAdapter":
        from safe_mcp_sqlite.adapter import SqliteAdapter

        return SqliteAdapter
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
