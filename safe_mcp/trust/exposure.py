"""What the MCP client's OS user (the agent's shell) can reach of what the gateway holds.

`safe-mcp check` runs as the gateway's user and reports, for another user (`--client-user`, default the user
running check: the agent runs as you), whether that user could read the secrets behind each reference, or
write the config, the org policy, the state or a target's own files. Each finding names its fix. With a Unix
socket (`serve --uds`), it also says whether that user can connect to it (expected of a client: tokens are
still required) and whether it could replace it (an exposure).

Access is computed from mode bits, owners and groups (the user's primary group and supplementary groups), the
way the kernel decides for that uid: search permission on every directory above, then read or write on the
file; writing the directory that holds a file means replacing the file, which counts as writing it. POSIX
ACLs and mandatory access control (SELinux, AppArmor) are not read: they can only narrow what is reported,
except an ACL that grants more (`getfacl` shows those). `os.access` is not used: it answers for the caller only.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from safe_mcp.trust.config import Config

__all__ = ["Finding", "Principal", "SocketReach", "exposure", "may", "principal", "socket_reach"]

Want = Literal["read", "write"]

_FIX_OWN_USER = ("run the gateway as its own OS user (safe-mcp serve --transport http as that user) and reach it "
                 "through `safe-mcp connect URL` with a token; see docs/security-teams.md")


@dataclass(frozen=True)
class Principal:
    """An OS user as the kernel sees it for file access: uid and every group id."""

    name: str
    uid: int
    gids: frozenset[int]


@dataclass(frozen=True)
class Finding:
    """One thing the gateway holds and whether the client's user can reach it (`exposed`), with the fix."""

    subject: str
    want: Want
    exposed: bool
    why: str
    fix: str = ""
    target: str | None = None
    path: str | None = None

    def doc(self) -> dict[str, Any]:
        return {"subject": self.subject, "access": self.want, "exposed": self.exposed, "why": self.why,
                "fix": self.fix, "target": self.target, "path": self.path}


def principal(name: str | None = None) -> Principal:
    """The user `name` (a login name or a numeric uid), or the user running this process.

    Raises:
        KeyError: no such user.
    """
    if name is None:
        return Principal(pwd.getpwuid(os.getuid()).pw_name, os.getuid(), frozenset({os.getgid(), *os.getgroups()}))
    entry = pwd.getpwuid(int(name)) if name.isdigit() else pwd.getpwnam(name)
    return Principal(entry.pw_name, entry.pw_uid, frozenset(os.getgrouplist(entry.pw_name, entry.pw_gid)))


def _bits(p: Principal, st: os.stat_result) -> int:
    """The rwx triple (as 4/2/1) that applies to `p` for a file with `st`."""
    mode = stat.S_IMODE(st.st_mode)
    if p.uid == st.st_uid:
        return (mode >> 6) & 7
    if st.st_gid in p.gids:
        return (mode >> 3) & 7
    return mode & 7


def may(p: Principal, path: Path, want: Want) -> tuple[bool, str]:
    """Whether `p` can read or write `path` (or, when it does not exist, create it), and why, in words.

    Writing includes replacing: write and search permission on the directory that holds the file.
    """
    full = Path(os.path.abspath(path))
    if p.uid == 0:
        return True, f"{p.name} is root, which reads and writes every file"
    parts = [full, *full.parents]
    parts.reverse()  # "/" first
    for directory in parts[:-1]:
        try:
            st = directory.stat()
        except OSError:
            return False, f"{directory} does not exist or cannot be examined"
        if not _bits(p, st) & 1:
            return False, f"{p.name} cannot enter {directory} (mode {stat.S_IMODE(st.st_mode):o}, owner {_owner(st)})"
    parent = full.parent
    pst = parent.stat()
    parent_writable = bool(_bits(p, pst) & 2)
    try:
        st = full.stat()
    except FileNotFoundError:
        if want == "write" and parent_writable:
            return True, f"{p.name} can create it: {parent} is writable by it"
        return False, f"it does not exist and {parent} is not writable by {p.name}"
    bit = 4 if want == "read" else 2
    if _bits(p, st) & bit:
        return True, f"{p.name} can {want} it (mode {stat.S_IMODE(st.st_mode):o}, owner {_owner(st)})"
    if want == "write" and parent_writable and not (stat.S_IMODE(pst.st_mode) & stat.S_ISVTX and st.st_uid != p.uid
                                                     and pst.st_uid != p.uid):
        return True, f"{p.name} can replace it: {parent} is writable by it (mode {stat.S_IMODE(pst.st_mode):o})"
    return False, f"{p.name} cannot {want} it (mode {stat.S_IMODE(st.st_mode):o}, owner {_owner(st)})"


@dataclass(frozen=True)
class SocketReach:
    """Whether the client's user can connect to the gateway's Unix socket (`serve --uds`). Connecting is what a
    client of the gateway must do, so it is not an exposure: every call still needs a token."""

    path: str
    can_connect: bool
    why: str
    fix: str = ""

    def doc(self) -> dict[str, Any]:
        return {"path": self.path, "can_connect": self.can_connect, "why": self.why, "fix": self.fix}


def socket_reach(p: Principal, path: Path, group: str = "") -> SocketReach:
    """Whether `p` can connect to the socket at `path`: search on every folder above it and write on the socket
    (the kernel's rule for AF_UNIX). When no socket is there yet, what `serve --uds` will create is judged: mode
    0600 owned by the gateway's user, or 0660 with `group`."""
    full = Path(os.path.abspath(path))
    note = "; that is how a client reaches the gateway, and every call still needs a token"
    join = (f"add {p.name} to the socket's group (usermod -aG GROUP {p.name}; serve with --uds-group GROUP or "
            "[server] uds_group), then start the client again")
    root = p.uid == 0
    parents = list(full.parents)
    parents.reverse()
    for directory in parents:
        try:
            st = directory.stat()
        except OSError:
            return SocketReach(str(full), False, f"{directory} does not exist or cannot be examined",
                               f"create it for the gateway (mkdir -p {full.parent}) before serving")
        if not root and not _bits(p, st) & 1:
            return SocketReach(str(full), False, f"{p.name} cannot enter {directory} (mode "
                                                 f"{stat.S_IMODE(st.st_mode):o}, owner {_owner(st)})",
                               f"let the socket's group enter it: chgrp GROUP {directory}; chmod g+x {directory}")
    try:
        st = full.stat()
    except FileNotFoundError:
        ahead = f"no socket at {full} yet (is the gateway serving?); when `serve --uds` creates it"
        if root:
            return SocketReach(str(full), True, f"{ahead}, {p.name} is root, which connects to every socket{note}")
        if p.uid == os.getuid():
            return SocketReach(str(full), True, f"{ahead}, {p.name} owns it{note}")
        gid = _group_id(group)
        if gid is not None and gid in p.gids:
            return SocketReach(str(full), True, f"{ahead} (mode 660, group {group}), {p.name} is in that group{note}")
        shown = f"mode 660, group {group}" if group else "mode 600"
        return SocketReach(str(full), False, f"{ahead} ({shown}), {p.name} could not connect to it", join)
    except OSError as exc:
        return SocketReach(str(full), False, f"cannot examine {full}: {exc.strerror}")
    if not stat.S_ISSOCK(st.st_mode):
        return SocketReach(str(full), False, f"{full} is not a socket", "point --uds at the socket serve creates")
    if root:
        return SocketReach(str(full), True, f"{p.name} is root, which connects to every socket (mode "
                                            f"{stat.S_IMODE(st.st_mode):o}){note}")
    if _bits(p, st) & 2:
        return SocketReach(str(full), True, f"{p.name} can connect (mode {stat.S_IMODE(st.st_mode):o}, owner "
                                            f"{_owner(st)}){note}")
    return SocketReach(str(full), False, f"{p.name} cannot connect (mode {stat.S_IMODE(st.st_mode):o}, owner "
                                         f"{_owner(st)}): neither its owner nor in its group", join)


def _group_id(group: str) -> int | None:
    if not group:
        return None
    try:
        return grp.getgrgid(int(group)).gr_gid if group.isdigit() else grp.getgrnam(group).gr_gid
    except KeyError:
        return None


def _owner(st: os.stat_result) -> str:
    try:
        user = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        user = str(st.st_uid)
    try:
        group = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        group = str(st.st_gid)
    return f"{user}:{group}"


def _gateway_user() -> str:
    return pwd.getpwuid(os.getuid()).pw_name


def _file(p: Principal, subject: str, path: Path, want: Want, fix: str, target: str | None = None) -> Finding:
    """`fix` is for a client of another user; the gateway's own user (or root) needs another domain, not chmod."""
    ok, why = may(p, path, want)
    if ok and p.uid in {0, os.getuid()}:
        fix = f"the agent runs as {p.name}, which no file mode can keep out: {_FIX_OWN_USER}"
    return Finding(subject, want, ok, why, fix if ok else "", target, str(path))


def exposure(config: Config, client: Principal, uds: Path | None = None) -> list[Finding]:
    """Every finding for `client`, the user the agent runs as; the caller is the gateway's user. `uds`: the
    gateway's Unix socket (whoever can write its folder can put a socket of its own there, and read the tokens
    and calls of every client)."""
    same = client.uid == os.getuid()
    gw = _gateway_user()
    out: list[Finding] = []
    chmod = f"chown {gw} and chmod go-rwx"
    for name, target in config.targets.items():
        for key, ref in target.spec.secret_refs(target.settings).items():
            out.append(_secret(client, same, f"secret targets.{name}.{key} = {ref}", ref, name))
        path = getattr(target.settings, "path", None)
        if target.kind == "sqlite" and isinstance(path, str) and path != ":memory:":
            db = Path(config.base_dir, path)
            for want in ("read", "write"):
                out.append(_file(client, f"the database file of target {name}", db, want,
                                 f"the agent's user can open it without the gate: {chmod} {db} (and its folder)", name))
    if config.state.password:
        out.append(_secret(client, same, f"secret state.password = {config.state.password}", config.state.password))
    src = Path(config.source).resolve()
    out.append(_file(client, "the config", src, "write",
                     f"the agent can loosen its own limits: {chmod} {src} and its folder, or {_FIX_OWN_USER}"))
    policy = config.org_policy.get("source")
    if policy:
        out.append(_file(client, "the org policy", Path(policy), "write",
                         f"chown root {policy} and its folder (chmod 644), and sign it (safe-mcp policy sign)"))
    import safe_mcp

    code = Path(safe_mcp.__file__).resolve().parent
    for path in (code, code / "gate" / "pipeline.py"):
        out.append(_file(client, f"the gateway's code ({path})", path / "__init__.py" if path == code else path, "write",
                         f"the agent could edit the gate itself: install safe-mcp where it cannot write (a root-owned "
                         f"venv, chmod -R go-w {code.parent}), or {_FIX_OWN_USER}"))
    if uds is not None:
        folder = Path(os.path.abspath(uds)).parent
        out.append(_file(client, "the folder of the gateway's Unix socket", folder, "write",
                         f"the agent could replace the socket with its own and collect every client's token and calls: "
                         f"{chmod} {folder} (g+x for the socket's group), or {_FIX_OWN_USER}"))
    if not config.state.url:
        state = config.state_dir
        fix = f"the agent can rewrite or delete its receipts and undo records: {chmod} {state}, or {_FIX_OWN_USER}"
        out.append(_file(client, "the state directory", state, "write", fix))
        db = state / "state.db"
        out.append(_file(client, "the state database (receipts, tokens, undo records)", db, "read", fix))
        out.append(_file(client, "the state database (receipts, tokens, undo records)", db, "write", fix))
        key_file = state / "approvers.key"
        if key_file.exists():
            out.append(_file(client, "the approvers' key (decrypts the TOTP secrets)", key_file, "read",
                             f"whoever reads it can approve as anyone: {chmod} {key_file}, or {_FIX_OWN_USER}"))
    return out


def _secret(client: Principal, same: bool, subject: str, ref: str, target: str | None = None) -> Finding:
    scheme, _, name = ref.partition(":")
    from safe_mcp.trust.secretstore import secrets_file

    if scheme == "env":
        if same:
            return Finding(subject, "read", True,
                           f"the gateway runs as {client.name}, so {name} sits in the environment of a process of "
                           f"that user (/proc/PID/environ) and, for stdio clients, in the client's own config",
                           f"store it with `safe-mcp secrets set` under the gateway's own user and reference it as "
                           f"keyring:NAME; {_FIX_OWN_USER}", target)
        return Finding(subject, "read", False,
                       f"{name} is in the gateway's environment; {client.name} cannot read another user's "
                       "/proc/PID/environ (keep it out of the client's config)", target=target)
    file = secrets_file()
    if file is not None:
        return _file(client, subject, file, "read",
                     f"move the secrets file to the gateway's own user: chown {_gateway_user()} {file}, chmod 600, "
                     f"folder go-rwx; or {_FIX_OWN_USER}", target)
    if same:
        return Finding(subject, "read", True, f"the OS keyring of {client.name} answers every program of that user",
                       f"store it in the keyring (or SAFE_MCP_SECRETS_FILE) of another user that runs the gateway; "
                       f"{_FIX_OWN_USER}", target)
    return Finding(subject, "read", False, f"it is in {_gateway_user()}'s OS keyring, not {client.name}'s", target=target)
