"""An MCP server with cProfile switched on at its first tool call, so the profile shows what serving
calls costs on the event loop's thread, not start-up (safe-mcp's gate runs in worker threads: the
bench profiles that in process). Writes the profile to PROFILE_OUT as the server exits.

    PROFILE_OUT=serve.prof python bench/profiled_serve.py -m safe_mcp serve --config safe-mcp.toml
    PROFILE_OUT=bare.prof python bench/profiled_serve.py bench/bare_server.py --sqlite bench.db
"""

from __future__ import annotations

import atexit
import cProfile
import os
import runpy
import sys
from typing import Any

from mcp.server.mcpserver.server import MCPServer

prof = cProfile.Profile()
_orig = MCPServer.call_tool


async def _call_tool(self: Any, *args: Any, **kwargs: Any) -> Any:
    prof.enable()  # stays on for the rest of the session
    return await _orig(self, *args, **kwargs)


MCPServer.call_tool = _call_tool  # type: ignore[method-assign]


@atexit.register
def _dump() -> None:
    prof.disable()
    prof.dump_stats(os.environ["PROFILE_OUT"])


if sys.argv[1] == "-m":
    sys.argv = [sys.argv[2], *sys.argv[3:]]
    runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
else:
    sys.argv = sys.argv[1:]
    runpy.run_path(sys.argv[0], run_name="__main__")
