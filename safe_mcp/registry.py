"""Finds adapter classes through the `safe_mcp.adapters` entry-point group, lazily."""

from __future__ import annotations

from functools import cache
from importlib.metadata import entry_points

from safe_mcp.adapter import Adapter
from safe_mcp.errors import ConfigError

__all__ = ["available_kinds", "load_adapter"]

GROUP = "safe_mcp.adapters"


def available_kinds() -> list[str]:
    return sorted({ep.name for ep in entry_points(group=GROUP)})


@cache
def load_adapter(kind: str, *, source: str = "", key: str = "kind") -> type[Adapter]:
    """Import the adapter registered for `kind` (and only it).

    Raises:
        ConfigError: no adapter is installed for this kind, or its extra is missing.
    """
    eps = [ep for ep in entry_points(group=GROUP) if ep.name == kind]
    if not eps:
        known = ", ".join(available_kinds()) or "none"
        raise ConfigError(
            source, key, f"no adapter for kind {kind!r} is installed (installed: {known})",
            f"install the extra that provides it, e.g. pip install 'safe-mcp[{kind}]'",
        )
    try:
        cls = eps[0].load()
    except ImportError as exc:
        raise ConfigError(
            source, key, f"the {kind} adapter cannot be imported: {exc}",
            f"install its dependencies: pip install 'safe-mcp[{kind}]'",
        ) from None
    if not (isinstance(cls, type) and issubclass(cls, Adapter)):
        raise ConfigError(source, key, f"entry point {kind!r} is not a safe_mcp Adapter")
    return cls
