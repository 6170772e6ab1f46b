"""What every CLI command needs first: the config it names (with the org policy applied) and a runtime."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from safe_mcp.gate.runtime import Runtime
    from safe_mcp.trust.config import Config

__all__ = ["config_of", "config_path_of", "runtime_of"]


def config_path_of(args: argparse.Namespace) -> Path:
    """`--config`, else `SAFE_MCP_CONFIG`, else `./safe-mcp.toml`."""
    from safe_mcp.trust.config import default_config_path

    return Path(args.config) if getattr(args, "config", None) else default_config_path()


def config_of(args: argparse.Namespace) -> Config:
    """The config with `--policy` (or `SAFE_MCP_POLICY`) applied.

    Raises:
        ConfigError: the config or the policy is invalid.
    """
    from safe_mcp.trust.orgpolicy import effective_config

    return effective_config(config_path_of(args), getattr(args, "policy", None))


def runtime_of(args: argparse.Namespace, session: str = "cli") -> Runtime:
    """A runtime on the config (its state store open, crashed intents reconciled)."""
    from safe_mcp.gate.runtime import Runtime

    return Runtime(config_of(args), session=session)
