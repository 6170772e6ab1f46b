"""The HTTP adapter: your own APIs behind the gate, as declared operations with effects, keys and undo.

Importing this package imports neither httpx nor the adapter: `HttpSettings` and `HttpSpec` (what the config needs)
come from `safe_mcp_http.settings`; `HttpAdapter` is imported when first named, httpx on the first request.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from safe_mcp_http.settings import HttpSettings, HttpSpec

if TYPE_CHECKING:
    from safe_mcp_http.adapter import HttpAdapter

__all__ = ["HttpAdapter", "HttpSettings", "HttpSpec"]


def __getattr__(name: str) -> Any:
    if name == "HttpAdapter":
        from safe_mcp_http.adapter import HttpAdapter

        return HttpAdapter
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
