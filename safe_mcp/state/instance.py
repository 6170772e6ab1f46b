"""Which running safe-mcp process owns a claim or an intent, and whether it is still alive.

An owner is `HOST/PID/START`: the host name, the process id and the process's start time (from
/proc on Linux), so a reused pid is not mistaken for the process that died. Only owners on this host
can be judged dead; another host's owner counts as alive (a shared state store across hosts needs
leases, which this does not claim to provide).
"""

from __future__ import annotations

import functools
import os
import socket

__all__ = ["instance_id", "is_dead", "is_running_here"]


def _stat(pid: int) -> list[str]:
    """/proc/PID/stat from field 3 (state) on, or [] where /proc is unavailable."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            stat = f.read()
    except OSError:
        return []
    # The command name (field 2) may contain spaces and parentheses: split after its last ')'.
    return stat[stat.rfind(")") + 2:].split()


def _start_time(pid: int) -> str:
    """Field 22 of /proc/PID/stat (clock ticks since boot), or ""."""
    fields = _stat(pid)
    return fields[19] if len(fields) > 19 else ""


@functools.cache
def instance_id() -> str:
    """This process's owner id (cached: a process keeps its id for life)."""
    pid = os.getpid()
    return f"{socket.gethostname()}/{pid}/{_start_time(pid)}"


def is_dead(owner: str) -> bool:
    """True only when `owner` was a process on this host that no longer runs."""
    if not owner:
        return True  # claims made before owners were recorded: their process is gone
    if owner == instance_id():
        return False
    host, _, rest = owner.partition("/")
    pid_text, _, started = rest.partition("/")
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # alive, owned by another user
    fields = _stat(pid)
    if fields and fields[0] in ("Z", "X"):
        return True  # killed, not yet reaped by its parent
    return bool(started) and len(fields) > 19 and fields[19] != started


def is_running_here(owner: str) -> bool:
    """True when `owner` is a process on this host that still runs (so nobody may settle its work)."""
    host = owner.partition("/")[0]
    return bool(owner) and host == socket.gethostname() and not is_dead(owner)
