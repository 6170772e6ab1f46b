"""safe-mcp: an MCP server that lets coding agents touch real systems safely."""

__version__ = "0.1.0"

__all__ = ["__version__"]
