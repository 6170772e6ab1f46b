"""A hook from another package, found through the `safe_mcp.hooks` entry-point group: the example package
in `example_hook_pkg/` is installed onto a path entry for the test (the venv is not changed), and its
steps run in the contract's order around a real statement and its undo."""

from __future__ import annotations

import importlib
import shutil
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from hook_helpers import ORDERS, hooked_runtime, rows, shop_config, sql
from safe_mcp_sqlite import SqliteAdapter

from safe_mcp.adapter import Call
from safe_mcp.errors import ConfigError
from safe_mcp.gate.calls import Caller
from safe_mcp.gate.hooks_run import hook_notes
from safe_mcp.hooks import GROUP, Hook, HookFailed, load_hook
from safe_mcp.trust.config import load_config

PKG = Path(__file__).parent / "example_hook_pkg"
MARKER = """
    [[targets.shop.hooks]]
    before = ["DELETE"]
    run = "marker"
"""


def install_on_path(pkg: Path, site: Path) -> None:
    """What an installer leaves behind, from the package's own pyproject: its modules and a dist-info
    whose entry_points.txt importlib.metadata reads. No build backend is needed."""
    project = tomllib.loads((pkg / "pyproject.toml").read_text())["project"]
    for module in tomllib.loads((pkg / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]:
        shutil.copytree(pkg / module, site / module)
    dist = site / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n")
    lines = [f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items())
             for group, eps in project["entry-points"].items()]
    (dist / "entry_points.txt").write_text("\n".join(lines))
    (dist / "RECORD").write_text("")


@pytest.fixture
def example_hook(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    site = tmp_path_factory.mktemp("site")
    install_on_path(PKG, site)
    sys.path.insert(0, str(site))
    importlib.invalidate_caches()
    try:
        yield
    finally:
        sys.path.remove(str(site))
        sys.modules.pop("example_hook", None)
        importlib.invalidate_caches()


def steps(tmp_path: Path) -> list[str]:
    return (tmp_path / ".safe-mcp" / "artifacts" / "marker-steps.log").read_text().splitlines()


@pytest.mark.usefixtures("example_hook")
def test_an_installed_hook_is_found_and_its_steps_run_in_order(tmp_path: Path) -> None:
    cls = load_hook("marker", "sqlite")
    assert issubclass(cls, Hook) and cls.__module__ == "example_hook"
    cfg = shop_config(tmp_path, MARKER)
    with hooked_runtime(cfg) as rt:
        target = rt.config.targets["shop"]
        adapter = SqliteAdapter("shop", target.settings, {}, base_dir=str(tmp_path), state_dir=str(rt.config.state_dir))
        try:
            delete = adapter.classify(Call(target="shop", tool="sql_execute",
                                           args={"sql": "DELETE FROM orders WHERE id = 1"}))
            assert hook_notes(rt.config, target, adapter, delete) == ["marker would note DELETE on orders"]
        finally:
            adapter.close()
        done = sql(rt, "DELETE FROM orders WHERE id = 1")
        assert rows(tmp_path / "shop.db") == ORDERS[1:]
        assert steps(tmp_path) == ["preview DELETE orders", "capture DELETE orders", "verify DELETE orders"]
        undone = rt.gate.undo(done.receipt_id, Caller(session="sess-undo"))
        assert "marker saw the undo of DELETE on orders" in undone.message
    assert steps(tmp_path)[3:] == ["verify DELETE orders", "compensate DELETE orders"]
    assert rows(tmp_path / "shop.db") == ORDERS


def test_a_hook_that_is_not_installed_is_a_config_error(tmp_path: Path) -> None:
    cfg = shop_config(tmp_path, MARKER)
    with pytest.raises(ConfigError, match=f"no hook named 'marker' is installed.*{GROUP}"):
        load_config(cfg)


def test_the_built_in_snapshots_are_plugins_of_the_same_contract() -> None:
    from importlib.metadata import entry_points

    for kind in ("sqlite", "postgres"):
        [ep] = [ep for ep in entry_points(group=GROUP) if ep.name == f"{kind}.snapshot"]
        assert ep.load() is load_hook("snapshot", kind)
        assert issubclass(ep.load(), Hook) and ep.load().kinds == {kind}
    with pytest.raises(HookFailed, match="no hook named 'snapshot' is installed for http"):
        load_hook("snapshot", "http")
