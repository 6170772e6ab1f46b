"""`safe-mcp serve` with cProfile switched on at the first tool call, so the profile shows what serving
calls costs on the event loop's thread, not start-up (the gate's own work runs in worker threads: the
bench profiles that in process). Writes the profile to PROFILE_OUT as the server exits.

    PROFILE_OUT=serve.prof python bench/profiled_serve.py serve --config safe-mcp.toml
"""

from __future__ import annotations

import atexit
import cProfile
import os
import sys
from typing import Any

from safe_mcp.faces import server
from safe_mcp.faces.cli import main

prof = cProfile.Profile()
_orig = server.StrictServer.call_tool


async def _call_tool(self: Any, *args: Any, **kwargs: Any) -> Any:
    prof.enable()  # stays on for the rest of the session
    return await _orig(self, *args, **kwargs)


server.StrictServer.call_tool = _call_tool  # type: ignore[method-assign]


@atexit.register
def _dump() -> None:
    prof.disable()
    prof.dump_stats(os.environ["PROFILE_OUT"])


sys.exit(main())
