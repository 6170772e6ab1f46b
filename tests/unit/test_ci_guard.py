"""CI must fail when a test that needs a service was skipped (SAFE_MCP_REQUIRE_SERVICES=1)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def _run(tmp_path: Path, require: bool) -> subprocess.CompletedProcess[str]:
    shutil.copy(TESTS / "conftest.py", tmp_path / "conftest.py")
    shutil.copy(TESTS / "support.py", tmp_path / "support.py")
    (tmp_path / "test_needs_service.py").write_text(
        "from support import require_service\n\n"
        "def test_needs_a_service_that_is_down():\n"
        "    require_service('nothing', '127.0.0.1', 9)\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "SAFE_MCP_REQUIRE_SERVICES")}
    if require:
        env["SAFE_MCP_REQUIRE_SERVICES"] = "1"
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)


def test_a_missing_service_skips_locally(tmp_path: Path) -> None:
    r = _run(tmp_path, require=False)
    assert r.returncode == 0 and "1 skipped" in r.stdout


def test_a_missing_service_fails_when_services_are_required(tmp_path: Path) -> None:
    r = _run(tmp_path, require=True)
    assert r.returncode != 0, r.stdout
    assert "not reachable" in r.stdout


def test_any_skip_fails_the_run_when_services_are_required(tmp_path: Path) -> None:
    shutil.copy(TESTS / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "test_skips.py").write_text(
        "import pytest\n\n"
        "def test_passes():\n    pass\n\n"
        "def test_skips_by_hand():\n    pytest.skip('a service test that skipped itself')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["SAFE_MCP_REQUIRE_SERVICES"] = "1"
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert r.returncode == 1, r.stdout
    assert "skipped while services are required" in r.stdout
