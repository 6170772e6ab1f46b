"""`safe-mcp check`'s reachability model against the kernel, for the whole class of owners and modes.

For every combination of directory owner and mode (sticky included) and file owner and mode, the model's answer
for another user must equal what that user really gets when it tries: read, write in place, or replace the file
through its directory. Owners cover the user itself, its primary group, a supplementary group, and strangers.
"""

from __future__ import annotations

import itertools
import os
import pwd
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from users import os_group, os_user, probe, python_paths, require_root, traversable

from safe_mcp.trust.exposure import may, principal

DIR_MODES = [0o700, 0o711, 0o750, 0o755, 0o770, 0o777, 0o1777, 0o1770, 0o300, 0o100]
FILE_MODES = [0o000, 0o200, 0o400, 0o600, 0o040, 0o020, 0o060, 0o004, 0o002, 0o006, 0o644, 0o666, 0o640, 0o604]


@pytest.fixture(scope="module")
def agent() -> Iterator[tuple[pwd.struct_passwd, int, Path]]:
    """A user (the agent's), a supplementary group it belongs to, and a folder every user can enter."""
    require_root()
    base = Path(tempfile.mkdtemp(prefix="safe-mcp-exposure-"))
    try:
        with os_user("safe_mcp_ag") as user, os_group("safe_mcp_sg", [user.pw_name]) as supp, \
                traversable([*python_paths(), base]):
            os.chmod(base, 0o711)
            yield user, supp, base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_model_matches_the_kernel_for_every_owner_and_mode(agent: tuple[pwd.struct_passwd, int, Path]) -> None:
    user, supp, base = agent
    owners = {"self": (user.pw_uid, user.pw_gid), "group": (0, user.pw_gid), "supp": (0, supp), "other": (0, 0)}
    files: list[Path] = []
    for (downer, (duid, dgid)), dmode in itertools.product(owners.items(), DIR_MODES):
        d = base / f"d-{downer}-{dmode:o}"
        d.mkdir()
        for (fowner, (fuid, fgid)), fmode in itertools.product(owners.items(), FILE_MODES):
            f = d / f"f-{fowner}-{fmode:o}"
            f.write_bytes(b"x")
            os.chown(f, fuid, fgid)
            os.chmod(f, fmode)
            files.append(f)
        os.chown(d, duid, dgid)
        os.chmod(d, dmode)
    who = principal(user.pw_name)
    assert supp in who.gids and user.pw_gid in who.gids
    predicted = {str(f): (may(who, f, "read")[0], may(who, f, "write")[0]) for f in files}
    tries = [(str(f), want) for f in files for want in ("read", "append", "replace")]
    seen = probe(user, base, tries)
    wrong = []
    for f in files:
        real_read = seen[f"{f} read"] == "allowed"
        real_write = seen[f"{f} append"] == "allowed" or seen[f"{f} replace"] == "allowed"
        if predicted[str(f)] != (real_read, real_write):
            wrong.append(f"{f.parent.name}/{f.name}: model {predicted[str(f)]}, kernel {(real_read, real_write)}")
    assert not wrong, "\n".join(wrong[:40]) + f"\n({len(wrong)} of {len(files)} differ)"
    assert len(files) == len(owners) ** 2 * len(DIR_MODES) * len(FILE_MODES)


def test_root_and_missing_paths(agent: tuple[pwd.struct_passwd, int, Path]) -> None:
    user, _supp, base = agent
    assert may(principal("root"), base / "nothing-here", "read")[0] is True  # root reaches everything
    who = principal(user.pw_name)
    ok, why = may(who, base / "no-such-dir" / "f", "write")
    assert not ok and "does not exist" in why
    open_dir = base / "open"
    open_dir.mkdir()
    os.chmod(open_dir, 0o777)
    ok, why = may(who, open_dir / "to-be", "write")  # a file it could create is one it can write
    assert ok and "create" in why
    assert principal(str(user.pw_uid)) == who
    with pytest.raises(KeyError):
        principal("safe_mcp_no_such_user_here")
