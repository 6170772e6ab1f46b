"""The HTTP adapter: your own APIs behind the gate, as declared operations with effects, keys and undo.

Importing this package does not import httpx; it is loaded on the first request.
"""

from __future__ import annotations

from safe_mcp_http.adapter import HttpAdapter
from safe_mcp_http.settings import HttpSettings

__all__ = ["HttpAdapter", "HttpSettings"]
