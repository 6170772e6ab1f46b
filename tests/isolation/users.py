"""Real OS users for the isolation tests: created with useradd, removed at the end; processes run as them.

These tests need root (to create users and switch to them); CI runs as root. Elsewhere they skip locally.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from support import require

ISOLATION_DIR = Path(__file__).resolve().parent
REPO = ISOLATION_DIR.parent.parent


def require_root() -> None:
    require(os.geteuid() == 0 and shutil.which("useradd") is not None and shutil.which("userdel") is not None,
            "the isolation tests create OS users: they need root and useradd/userdel")


@contextmanager
def os_user(prefix: str) -> Iterator[pwd.struct_passwd]:
    """A new system user (no home, no login shell) named PREFIX_<random>; deleted afterwards."""
    name = f"{prefix}_{secrets.token_hex(4)}"
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "--user-group", name],
                   check=True, capture_output=True)
    try:
        yield pwd.getpwnam(name)
    finally:
        subprocess.run(["userdel", name], check=False, capture_output=True)


@contextmanager
def os_group(prefix: str, members: Sequence[str]) -> Iterator[int]:
    """A new system group with `members` as supplementary members; deleted afterwards. Yields its gid."""
    import grp

    name = f"{prefix}_{secrets.token_hex(4)}"
    subprocess.run(["groupadd", "--system", name], check=True, capture_output=True)
    try:
        for member in members:
            subprocess.run(["usermod", "--append", "--groups", name, member], check=True, capture_output=True)
        yield grp.getgrnam(name).gr_gid
    finally:
        subprocess.run(["groupdel", name], check=False, capture_output=True)


@contextmanager
def traversable(paths: Sequence[Path]) -> Iterator[list[str]]:
    """Let every user enter (o+x) each directory above `paths` (the interpreter under /root, say); restore the
    modes afterwards. Yields the directories that had to be opened, so a test can say so."""
    changed: dict[Path, int] = {}
    for path in paths:
        for directory in [p for p in Path(os.path.realpath(path)).parents]:
            mode = stat.S_IMODE(directory.stat().st_mode)
            if not mode & stat.S_IXOTH and directory not in changed:
                changed[directory] = mode
                os.chmod(directory, mode | stat.S_IXOTH)
    try:
        yield [str(d) for d in changed]
    finally:
        for directory, mode in changed.items():
            os.chmod(directory, mode)


def python_paths() -> list[Path]:
    """What a process of another user must reach to run this venv's Python with safe-mcp and the tests."""
    return [Path(sys.executable), Path(os.path.realpath(sys.executable)), Path(sys.prefix) / "pyvenv.cfg",
            Path(sys.base_prefix) / "lib", REPO / "safe_mcp", ISOLATION_DIR / "bridge_client.py"]


def as_user(user: pwd.struct_passwd, home: Path, extra_env: dict[str, str] | None = None) -> dict[str, Any]:
    """Popen/run keyword arguments that start a process as `user` the way a login would: its uid, its groups
    (primary and supplementary, none of root's), a minimal environment (none of the test runner's variables,
    so no secret rides along)."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "LANG": "C.UTF-8",
           "PYTHONDONTWRITEBYTECODE": "1", **(extra_env or {})}
    return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": os.getgrouplist(user.pw_name, user.pw_gid),
            "env": env, "cwd": str(home)}


def uid_of(pid: int) -> int:
    """The real uid of a running process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text(encoding="ascii").splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError(f"no Uid line for {pid}")


# Run as the other user: try each (path, access) and print what the kernel said.
PROBE = r"""
import json, os, sys
out = {}
for path, want in json.loads(sys.stdin.read()):
    try:
        if want == "read":
            open(path, "rb").close()
        elif want == "append":  # no O_CREAT: protected_regular would judge a create, not the mode bits
            os.close(os.open(path, os.O_WRONLY | os.O_APPEND))
        elif want == "replace":
            tmp = os.path.join(os.path.dirname(path), ".probe-" + str(os.getpid()))
            open(tmp, "wb").close()
            os.replace(tmp, path)
        elif want == "list":
            os.listdir(path)
        out[path + " " + want] = "allowed"
    except OSError as exc:
        out[path + " " + want] = type(exc).__name__
print(json.dumps(out))
"""


def probe(user: pwd.struct_passwd, home: Path, tries: list[tuple[str, str]]) -> dict[str, str]:
    """What `user` really gets for each (path, read | append | replace | list): "allowed" or the error's name."""
    import json

    r = subprocess.run([sys.executable, "-c", PROBE], input=json.dumps(tries), capture_output=True, text=True,
                       timeout=120, check=True, **as_user(user, home))
    result: dict[str, str] = json.loads(r.stdout)
    return result


def own(path: Path, user: pwd.struct_passwd, mode: int, gid: int | None = None) -> None:
    """Give `path` to `user` (and its group, or `gid`) with `mode`."""
    os.chown(path, user.pw_uid, user.pw_gid if gid is None else gid)
    os.chmod(path, mode)
