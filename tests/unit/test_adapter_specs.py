"""Third-party adapters, installed for real (a dist-info on sys.path): with a light spec they are imported on
first use of their target; without one they are loaded at config load as before; a spec that cannot serve
fails at start or refuses with a receipt, never runs something else."""

from __future__ import annotations

import importlib
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import write_config

import safe_mcp.registry as registry
from safe_mcp.adapter import Adapter
from safe_mcp.errors import ConfigError, Refused
from safe_mcp.gate.calls import Caller
from safe_mcp.gate.runtime import Runtime
from safe_mcp.trust.config import load_config

SPEC = '''
from safe_mcp.adapter import AdapterSettings, AdapterSpec

class EchoSettings(AdapterSettings):
    word: str

class EchoSpec(AdapterSpec):
    kind = "{kind}"
    settings_model = EchoSettings
    tools = frozenset({{"echo_call"}})
    requires = {requires!r}

    @classmethod
    def describe(cls, settings):
        return {{"reaches": "echo " + settings.word, "compensation": "none"}}
'''
ADAPTER = '''
from safe_mcp.adapter import Adapter, Classification, Outcome, Preview
from safe_mcp.effects import Effect
from {pkg}.spec import EchoSpec, EchoSettings

class EchoAdapter({bases}):
{body}
    def classify(self, call):
        return Classification(effect=Effect.READ, reason="echo")
    def preview(self, call, classification, budget):
        return Preview(effect=Effect.READ)
    def execute(self, call, classification, budget):
        return Outcome(result={{"said": self.settings.word}})
    def compensate(self, compensation, budget):
        return Outcome()
'''
SPEC_BODY = ""
OWN_BODY = '''    kind = "{kind}"
    settings_model = EchoSettings
    tools = frozenset({{"echo_call"}})
'''


def install(site: Path, pkg: str, kind: str, *, with_spec: bool, on_spec: bool = True,
            requires: tuple[str, ...] = ()) -> None:
    (site / pkg).mkdir()
    (site / pkg / "__init__.py").write_text("")
    (site / pkg / "spec.py").write_text(textwrap.dedent(SPEC.format(kind=kind, requires=requires)))
    bases = "EchoSpec, Adapter" if on_spec else "Adapter"
    body = SPEC_BODY if on_spec else OWN_BODY.format(kind=kind)
    (site / pkg / "adapter.py").write_text(ADAPTER.format(pkg=pkg, bases=bases, body=body))
    dist = site / f"{pkg}-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {pkg}\nVersion: 1.0\n")
    eps = f"[safe_mcp.adapters]\n{kind} = {pkg}.adapter:EchoAdapter\n"
    if with_spec:
        eps += f"\n[safe_mcp.adapter_specs]\n{kind} = {pkg}.spec:EchoSpec\n"
    (dist / "entry_points.txt").write_text(eps)
    (dist / "RECORD").write_text("")


def clear_registry() -> None:
    for f in (registry._groups, registry.load_adapter, registry._registered_spec):
        f.cache_clear()


@pytest.fixture
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    site = tmp_path_factory.mktemp("site")
    sys.path.insert(0, str(site))
    importlib.invalidate_caches()
    clear_registry()
    try:
        yield site
    finally:
        sys.path.remove(str(site))
        for name in [m for m in sys.modules if m.startswith("echo_")]:
            del sys.modules[name]
        importlib.invalidate_caches()
        clear_registry()


def config(tmp_path: Path, kind: str) -> Path:
    return write_config(tmp_path, f'[targets.e]\nkind = "{kind}"\nword = "hi"\n[state]\npath = "{tmp_path / "st"}"\n')


def echo(rt: Runtime) -> dict[str, object]:
    from safe_mcp.adapter import Call

    return rt.gate.run(Call(target="e", tool="echo_call", args={}), Caller(session="s", client="t")).result


def test_an_adapter_with_a_spec_is_imported_on_first_use_of_its_target(site: Path, tmp_path: Path) -> None:
    install(site, "echo_lazy", "echolazy", with_spec=True)
    cfg = load_config(config(tmp_path, "echolazy"))
    assert "echo_lazy.spec" in sys.modules and "echo_lazy.adapter" not in sys.modules
    rt = Runtime(cfg)
    try:
        assert rt.serves("echo_call")
        assert rt.targets_view()["targets"][0]["reaches"] == "echo hi"
        assert "echo_lazy.adapter" not in sys.modules
        assert echo(rt) == {"said": "hi"}
        assert "echo_lazy.adapter" in sys.modules
    finally:
        rt.close()


def test_an_adapter_without_a_spec_is_loaded_with_the_config_as_before(site: Path, tmp_path: Path) -> None:
    install(site, "echo_plain", "echoplain", with_spec=False, on_spec=False)
    cfg = load_config(config(tmp_path, "echoplain"))
    assert "echo_plain.adapter" in sys.modules
    assert issubclass(cfg.targets["e"].spec, Adapter) and cfg.targets["e"].spec is cfg.targets["e"].adapter_cls
    rt = Runtime(cfg)
    try:
        assert echo(rt) == {"said": "hi"}
    finally:
        rt.close()
    with pytest.raises(ConfigError, match=r"targets\.e\.word"):
        load_config(write_config(tmp_path, f'[targets.e]\nkind = "echoplain"\n[state]\npath = "{tmp_path / "st"}"\n'))


def test_a_bad_setting_of_a_spec_adapter_fails_at_load_without_importing_the_adapter(site: Path, tmp_path: Path) -> None:
    install(site, "echo_bad", "echobad", with_spec=True)
    with pytest.raises(ConfigError, match=r"targets\.e\.word"):
        load_config(write_config(tmp_path, f'[targets.e]\nkind = "echobad"\nword = 5\n[state]\npath = "{tmp_path}"\n'))
    assert "echo_bad.adapter" not in sys.modules


def test_a_missing_driver_still_fails_at_start(site: Path, tmp_path: Path) -> None:
    install(site, "echo_nodrv", "echonodrv", with_spec=True, requires=("sys", "no_such_driver_xyz"))
    with pytest.raises(ConfigError) as err:
        load_config(config(tmp_path, "echonodrv"))
    assert err.value.key == "targets.e.kind"
    assert "No module named 'no_such_driver_xyz'" in err.value.problem and "safe-mcp[echonodrv]" in err.value.fix


def test_an_adapter_that_is_not_built_on_its_spec_is_refused_with_a_receipt(site: Path, tmp_path: Path) -> None:
    install(site, "echo_off", "echooff", with_spec=True, on_spec=False)
    rt = Runtime(load_config(config(tmp_path, "echooff")))
    try:
        with pytest.raises(Refused, match="does not match its spec") as err:
            echo(rt)
        assert "reinstall" in err.value.remedy and err.value.receipt_id
        receipt = rt.store.receipt(err.value.receipt_id)
        assert receipt is not None and receipt.target == "e" and receipt.decision == "refuse"
        assert "echo_off.adapter" in sys.modules  # imported, checked, never built nor run
    finally:
        rt.close()
