"""Operations imported from an OpenAPI 3 document: reads run, the rest are irreversible unless an entry adds undo."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from apis import OPENAPI, Hosting
from http_support import gated
from support import call, refused, write_config

pytestmark = pytest.mark.anyio


def config(url: str, openapi: str, extra: str = "") -> str:
    return f"""
        [targets.hosting]
        kind = "http"
        base_url = "{url}"
        access = "read-write"
        headers = {{ Authorization = "env:HOSTING_TOKEN" }}
        openapi = "{openapi}"

        [[targets.hosting.operations]]
        name = "createVolume"
        compensate = {{ method = "DELETE", path = "/v1/volumes/{{result.id}}" }}

        [confirm]
        min_delay_s = 0
        destructive = "none"
        """ + extra


async def test_imported_operations_get_their_effects_and_declared_undo(tmp_path: Path, hosting: Hosting) -> None:
    (tmp_path / "hosting.json").write_text(json.dumps(OPENAPI))
    cfg = write_config(tmp_path, config(hosting.url, "hosting.json"))
    async with gated(cfg) as c:
        listed = await call(c, "http_call", target="hosting", operation="listVolumes", params={"limit": 5})
        assert listed["effect"] == "read" and len(listed["result"]["body"]) == 2
        assert hosting.requests("GET", "^/v1/volumes$")[0].query == {"limit": ["5"]}
        text = await refused(c, "http_call", target="hosting", operation="listVolumes", params={"force": True})
        assert "takes no param(s) force" in text

        made = await call(c, "http_call", target="hosting", operation="createVolume", body={"name": "scratch"})
        assert made["effect"] == "write" and made["undo"]
        await call(c, "undo", receipt_id=made["receipt_id"])
        assert made["result"]["body"]["id"] not in hosting.volumes

        for op, params in (("renameVolume", {"id": "vol_2"}), ("deleteVolume", {"id": "vol_1"})):
            pending = await call(c, "http_call", target="hosting", operation=op, params=params,
                                 body={"name": "x"} if op == "renameVolume" else None)
            assert pending["status"] == "pending" and pending["effect"] == "irreversible", op
            assert pending["pending"]["confirm_by"] == "human"
        for op in ("noId", "post /v1/no-id", "getvolume"):
            assert "has no operation" in await refused(c, "http_call", target="hosting", operation=op)
    assert hosting.requests("PATCH") == [] and [s.path for s in hosting.requests("DELETE")] == [
        f"/v1/volumes/{made['result']['body']['id']}"]
    assert "vol_1" in hosting.volumes


async def test_the_org_policy_forbids_imported_operations_too(tmp_path: Path, hosting: Hosting) -> None:
    (tmp_path / "hosting.json").write_text(json.dumps(OPENAPI))
    cfg = write_config(tmp_path, config(hosting.url, "hosting.json", 'irreversible = "none"\n'))
    pol = tmp_path / "policy.toml"
    pol.write_text('[forbid]\nhttp = ["hosting:deletebackup*"]\n')
    async with gated(cfg, pol) as c:
        text = await refused(c, "http_call", target="hosting", operation="deleteBackup",
                             params={"id": "vol_1", "backup": "bk_1"})
        assert "forbids" in text
    assert hosting.requests("DELETE") == [] and hosting.volumes["vol_1"]["backups"] == ["bk_1", "bk_2"]


async def test_a_document_from_the_api_itself_and_not_from_elsewhere(tmp_path: Path, hosting: Hosting) -> None:
    cfg = write_config(tmp_path, config(hosting.url, f"{hosting.url}/openapi.json"))
    async with gated(cfg) as c:
        listed = await call(c, "http_call", target="hosting", operation="getVolume", params={"id": "vol_2"})
        assert listed["result"]["body"]["name"] == "staging"
    assert hosting.requests("GET", "^/openapi.json$")[0].headers["authorization"], "same origin: sent with its headers"

    other = tmp_path / "other"
    other.mkdir()
    cfg = write_config(other, config(hosting.url, f"http://localhost:{hosting.port}/openapi.json"))
    async with gated(cfg) as c:
        text = await refused(c, "http_call", target="hosting", operation="getVolume", params={"id": "vol_2"})
        assert "may not reach" in text and "allowed_hosts" in text


async def test_an_unusable_document_makes_the_target_unavailable(tmp_path: Path, hosting: Hosting) -> None:
    (tmp_path / "bad.json").write_text(json.dumps({"swagger": "2.0", "paths": {}}))
    for name in ("bad.json", "missing.json"):
        cfg = write_config(tmp_path, config(hosting.url, name))
        async with gated(cfg) as c:
            text = await refused(c, "http_call", target="hosting", operation="getVolume", params={"id": "vol_2"})
            assert "unavailable" in text and "OpenAPI" in text
    assert hosting.seen == []
