"""The `hooks` key: what loads, what is refused (by the loader and by the published JSON schema alike),
and that hooks are part of the policy digest (a confirmation given without a hook does not carry over)."""

from __future__ import annotations

import json
import sys
import tomllib
from pathlib import Path

import jsonschema
import pytest
from hook_helpers import shop_config

from safe_mcp.errors import ConfigError
from safe_mcp.hooks import HookSpec
from safe_mcp.trust.config import load_config
from safe_mcp.trust.schema import config_schema

ROOT = Path(__file__).resolve().parents[2]

GOOD = [
    '[[targets.shop.hooks]]\nbefore = ["DROP TABLE", "TRUNCATE", "DELETE"]\nrun = "snapshot"\nrequired = true\n',
    '[[targets.shop.hooks]]\nbefore = ["DROP TABLE"]\nrun = ["pg_dump", "-t", "{table}", "-Fc", "-f", "{artifact}"]\n'
    'restore = ["pg_restore", "-d", "shop", "{artifact}"]\nrequired = false\ntimeout_s = 60\n',
    '[[targets.shop.hooks]]\nbefore = ["DELETE"]\nrun = "snapshot"\n\n[[targets.shop.hooks]]\nbefore = ["UPDATE"]\n'
    f'run = [{json.dumps(sys.executable)}, "-c", "pass"]\n',
]

BAD = [
    ('[[targets.shop.hooks]]\nbefore = ["DROP DATABASE"]\nrun = "snapshot"\n', "unknown statement kind"),
    ('[[targets.shop.hooks]]\nbefore = ["drop table"]\nrun = "snapshot"\n', "unknown statement kind"),
    ('[[targets.shop.hooks]]\nbefore = []\nrun = "snapshot"\n', "at least 1"),
    ('[[targets.shop.hooks]]\nbefore = ["DELETE"]\nrun = []\n', "argv list"),
    ('[[targets.shop.hooks]]\nbefore = ["DELETE"]\nrun = "Snap Shot"\n', "lower-case"),
    ('[[targets.shop.hooks]]\nbefore = ["DELETE"]\n', "run"),
    ('[[targets.shop.hooks]]\nbefore = ["DELETE"]\nrun = "snapshot"\nshell = true\n', "shell"),
    ('[[targets.shop.hooks]]\nbefore = ["DELETE"]\nrun = "snapshot"\ntimeout_s = 0\n', "out of range"),
]


@pytest.mark.parametrize("hooks", GOOD)
def test_good_hooks_load_and_match_the_schema(tmp_path: Path, hooks: str) -> None:
    cfg = shop_config(tmp_path, hooks)
    jsonschema.validate(tomllib.loads(cfg.read_text()), config_schema())
    specs = load_config(cfg).targets["shop"].settings.hooks  # type: ignore[attr-defined]
    assert specs and all(isinstance(s, HookSpec) for s in specs)


@pytest.mark.parametrize(("hooks", "why"), BAD)
def test_bad_hooks_are_refused_by_the_loader_and_the_schema(tmp_path: Path, hooks: str, why: str) -> None:
    cfg = shop_config(tmp_path, hooks)
    with pytest.raises(ConfigError, match=why) as refused:
        load_config(cfg)
    assert "targets.shop.hooks" in str(refused.value)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(tomllib.loads(cfg.read_text()), config_schema())


def test_the_schema_names_every_key_of_a_hook() -> None:
    for variant in config_schema()["properties"]["targets"]["additionalProperties"]["oneOf"]:
        if variant["properties"]["kind"]["const"] in {"sqlite", "postgres"}:
            item = variant["properties"]["hooks"]["items"]
            assert set(item["properties"]) == set(HookSpec.model_fields)
            assert set(item["required"]) == {n for n, f in HookSpec.model_fields.items() if f.is_required()}


def test_the_published_schema_has_the_hooks() -> None:
    published = json.loads((ROOT / "config" / "safe-mcp.schema.json").read_text())
    assert published == config_schema()


def test_hooks_are_part_of_the_policy(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    without = load_config(shop_config(tmp_path / "a", ""))
    with_hook = load_config(shop_config(tmp_path / "b", GOOD[0]))
    assert without.policy_digest() != with_hook.policy_digest()
