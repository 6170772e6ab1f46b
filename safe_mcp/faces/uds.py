"""The gateway's Unix-socket listener (`serve --transport http --uds PATH`): bound here, served by uvicorn.

The socket file is created under umask 0177, so it is mode 0600 from its first instant (no window in which
another user could connect); with a group it is then handed to that group and opened to 0660. Only the
gateway's user and the group's members can connect; every request still needs a bearer token. A socket left by
a server that died is removed; anything else at the path (a live server, a regular file) is refused. On a clean
exit (SIGTERM, SIGINT, SIGHUP) the socket is removed, unless another server has replaced it meanwhile.
"""

from __future__ import annotations

import errno
import grp
import os
import signal
import socket
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from safe_mcp.errors import ConfigError

__all__ = ["UDS_HOST", "bind_unix", "remove_unix", "stopping_on_signals"]

UDS_HOST = "localhost"
"""The Host header accepted over the socket (what `safe-mcp connect unix://...` and `curl --unix-socket` send)."""
_MAX_PATH = 107  # sun_path is 108 bytes with its terminating NUL on Linux (104 on the BSDs)


def bind_unix(path: Path, group: str, source: str, key: str) -> socket.socket:
    """A listening AF_UNIX socket at `path`: mode 0600, or 0660 owned by `group` when one is named.

    Raises:
        ConfigError: the folder does not exist, the path is too long or is held by something else (a live
            server, a file that is not a socket), or the group is unknown or not one the gateway may give it to.
    """
    path = Path(os.path.abspath(path))
    if len(os.fsencode(path)) > _MAX_PATH:
        raise ConfigError(source, key, f"the socket path {path} is longer than the {_MAX_PATH} bytes a Unix socket "
                                       "address holds", "use a shorter path, e.g. /run/safe-mcp/mcp.sock")
    if not path.parent.is_dir():
        raise ConfigError(source, key, f"the folder {path.parent} of the socket does not exist",
                          f"create it (mkdir -p {path.parent}, owned by the gateway's user, mode 0750 or 0711)")
    gid = _gid(group, source, key) if group else None
    _clear_stale(path, source, key)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(str(path))
    except OSError as exc:
        sock.close()
        raise ConfigError(source, key, f"cannot create the socket {path}: {exc.strerror}",
                          f"let the gateway's user write {path.parent}") from None
    finally:
        os.umask(old)
    if gid is not None:
        try:
            os.chown(path, -1, gid)
            os.chmod(path, 0o660)
        except OSError as exc:
            sock.close()
            remove_unix(path, None)
            raise ConfigError(source, key, f"cannot give the socket {path} to group {group!r}: {exc.strerror}",
                              f"run the gateway as a member of {group} (usermod -aG {group} USER) or as root") from None
    sock.listen(128)
    sock.setblocking(False)
    return sock


@contextmanager
def stopping_on_signals(server: Any) -> Iterator[list[int]]:
    """SIGTERM, SIGHUP and SIGINT ask the uvicorn `server` to shut down gracefully (its socket is then removed by
    the caller's `finally`), whenever they arrive: before uvicorn takes SIGTERM/SIGINT over, while it holds them,
    and after (uvicorn re-raises what it caught once it has shut down). Yields the signals received; the caller
    exits 128 + the first. Never raises from the handler: an exception raised at an arbitrary point of the event
    loop (SystemExit inside the loop's own select, or its constructor) left tracebacks and half-built objects."""
    received: list[int] = []

    def stop(signum: int, _frame: object) -> None:
        received.append(signum)
        server.should_exit = True

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)}
    try:
        yield received
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def remove_unix(path: Path, inode: int | None) -> None:
    """Remove the socket at `path` if it is still ours (same inode; any socket when `inode` is None)."""
    try:
        st = os.lstat(path)
        if stat.S_ISSOCK(st.st_mode) and (inode is None or st.st_ino == inode):
            os.unlink(path)
    except OSError:
        pass  # already gone, or its folder is no longer ours: nothing of ours is left to remove


def _gid(group: str, source: str, key: str) -> int:
    try:
        return grp.getgrnam(group).gr_gid if not group.isdigit() else grp.getgrgid(int(group)).gr_gid
    except KeyError:
        raise ConfigError(source, "--uds-group" if key.startswith("--") else "server.uds_group", f"no group named {group!r}",
                          "create it (groupadd) and add the client users to it, or name an existing group") from None


def _clear_stale(path: Path, source: str, key: str) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise ConfigError(source, key, f"{path} exists and is not a socket", "choose another path, or remove it "
                                                                              "yourself if it is not needed")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(2)
    try:
        probe.connect(str(path))
    except OSError as exc:
        if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
            raise ConfigError(source, key, f"cannot tell whether {path} is in use: {exc.strerror}",
                              "check which process holds it (ss -xlp), stop it or remove the socket") from None
        os.unlink(path)  # nobody listens: left behind by a server that died
        return
    finally:
        probe.close()
    raise ConfigError(source, key, f"another server is listening on {path}",
                      "stop it first (ss -xlp shows which process), or choose another --uds path")
