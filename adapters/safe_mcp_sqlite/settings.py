"""What the config needs of a SQLite target (settings, tools, `describe`), without the adapter's modules:
the adapter itself (`safe_mcp_sqlite.adapter`) is imported when its target is first used."""

from __future__ import annotations

import hashlib
import sqlite3
from contextlib import closing
from pathlib import Path

from pydantic import Field, field_validator

from safe_mcp.adapter import AdapterSettings, AdapterSpec
from safe_mcp.hooks import HookSpec, HooksSetting, check_hooks

__all__ = ["SqliteSettings", "SqliteSpec"]


class SqliteSettings(AdapterSettings):
    path: str = Field(description="the database file, relative to the config file's folder")
    foreign_keys: bool = Field(True, description="enforce foreign keys (and their cascades) on writes")
    statement_timeout_s: float = Field(30, gt=0, description="a statement running longer is interrupted")
    journal_keep_days: int = Field(30, ge=1, description="before-images (what undo restores) are kept in the "
                                                      "file this many days, then pruned by a later write")
    hooks: HooksSetting = ()

    @field_validator("hooks")
    @classmethod
    def _hooks_installed(cls, value: tuple[HookSpec, ...]) -> tuple[HookSpec, ...]:
        return check_hooks("sqlite", value)


class SqliteSpec(AdapterSpec):
    kind = "sqlite"
    settings_model = SqliteSettings
    tools = frozenset({"sql_query", "sql_execute", "sql_schema"})

    @classmethod
    def sandbox_copy(cls, settings: AdapterSettings, base_dir: str, sandbox_dir: str) -> AdapterSettings | None:
        assert isinstance(settings, SqliteSettings)
        src = Path(base_dir, settings.path).resolve()
        if not src.exists():
            return None
        # Targets naming the same file share one copy, as they share the file.
        dst = Path(sandbox_dir, hashlib.sha256(str(src).encode()).hexdigest()[:16], src.name)
        if not dst.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            # The backup API copies a consistent database, including what is still in the WAL.
            with closing(sqlite3.connect(f"{src.as_uri()}?mode=ro", uri=True)) as a, closing(sqlite3.connect(dst)) as b:
                a.backup(b)
        return settings.model_copy(update={"path": str(dst)})

    @classmethod
    def describe(cls, settings: AdapterSettings) -> dict[str, str]:
        assert isinstance(settings, SqliteSettings)
        return {"reaches": f"sqlite file {settings.path}",
                "compensation": "before-images of changed rows, journaled in the file with each write; dropped "
                                "tables kept aside (soft drop); dropped triggers, views and indexes recreated"}
