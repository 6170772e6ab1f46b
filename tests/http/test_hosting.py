"""A hosting API whose volumes keep their backups on the same volume (the PocketOS shape)."""

from __future__ import annotations

from pathlib import Path

import pytest
from apis import Hosting, Payments
from http_support import billing, gated, hosting_target
from support import call, refused, write_config

pytestmark = pytest.mark.anyio

POLICY = """
[forbid]
http = ["hosting:delete_backup*"]
"""


def policy(tmp_path: Path, text: str = POLICY) -> Path:
    path = tmp_path / "org-policy.toml"
    path.write_text(text)
    return path


async def test_deleting_a_volume_waits_for_a_human_and_sends_nothing(tmp_path: Path, hosting: Hosting) -> None:
    cfg = write_config(tmp_path, hosting_target(hosting.url) + "\n[confirm]\nmin_delay_s = 0\n")
    async with gated(cfg, policy(tmp_path)) as c:
        pending = await call(c, "http_call", target="hosting", operation="delete_volume", params={"id": "vol_1"})
        assert pending["status"] == "pending" and pending["effect"] == "irreversible"
        assert pending["pending"]["confirm_by"] == "human"
        assert pending["preview"]["sample"][0]["request"] == {"method": "DELETE", "url": f"{hosting.url}/v1/volumes/vol_1",
                                                               "body": None}
        text = await refused(c, "confirm", action_id=pending["pending"]["action_id"])
        assert "human" in text
    assert hosting.requests("DELETE") == [], "nothing was sent"
    assert hosting.volumes["vol_1"]["backups"] == ["bk_1", "bk_2"]


async def test_backups_forbidden_by_the_org_policy_never_run(tmp_path: Path, hosting: Hosting) -> None:
    cfg = write_config(tmp_path, hosting_target(hosting.url) + '\n[confirm]\nirreversible = "none"\n')
    async with gated(cfg, policy(tmp_path)) as c:
        text = await refused(c, "http_call", target="hosting", operation="delete_backup",
                             params={"id": "vol_1", "backup": "bk_1"})
        assert "forbids hosting:delete_backup*" in text
        dry = await refused(c, "http_call", target="hosting", operation="delete_backup",
                            params={"id": "vol_1", "backup": "bk_1"}, dry_run=True)
        assert "forbid" in dry
    assert hosting.requests("DELETE") == []
    assert hosting.volumes["vol_1"]["backups"] == ["bk_1", "bk_2"]


async def test_renaming_the_target_or_the_operation_does_not_escape_the_org_policy(tmp_path: Path,
                                                                                  hosting: Hosting) -> None:
    renamed = hosting_target(hosting.url).replace("targets.hosting", "targets.infra").replace(
        '"delete_backup"', '"rm_bk"')
    cfg = write_config(tmp_path, renamed + '\n[confirm]\nirreversible = "none"\n')
    by_host_and_path = '[forbid]\nhttp = ["127.0.0.1:/v1/volumes/*/backups/*"]\n'
    async with gated(cfg, policy(tmp_path, by_host_and_path)) as c:
        text = await refused(c, "http_call", target="infra", operation="rm_bk", params={"id": "vol_1", "backup": "bk_2"})
        assert "forbids" in text
    assert hosting.requests("DELETE") == [] and hosting.volumes["vol_1"]["backups"] == ["bk_1", "bk_2"]


async def test_only_declared_operations_run_and_there_is_no_free_form_url(tmp_path: Path, hosting: Hosting) -> None:
    cfg = write_config(tmp_path, hosting_target(hosting.url))
    async with gated(cfg) as c:
        for op in ("DELETE /v1/volumes/vol_1", f"{hosting.url}/v1/volumes/vol_1", "delete_volumes", "DELETE_VOLUME"):
            text = await refused(c, "http_call", target="hosting", operation=op)
            assert "has no operation" in text and "list_volumes" in text
    assert hosting.seen == []


@pytest.mark.parametrize("value", ["..", ".", "", "../vol_2", "vol_1/backups/bk_1", "vol_1?force=1", "vol_1#x",
                                   "//evil.test/x", "@evil.test", "http://evil.test/", "%2e%2e", "vol_1\r\nX-Evil: 1",
                                   "vol_1/../../admin"])
async def test_params_fill_one_segment_and_never_climb_or_leave(tmp_path: Path, hosting: Hosting, value: str) -> None:
    cfg = write_config(tmp_path, hosting_target(hosting.url))
    async with gated(cfg) as c:
        r = await c.call_tool("http_call", {"target": "hosting", "operation": "get_volume", "params": {"id": value}})
    for seen in hosting.seen:
        assert seen.path.startswith("/v1/volumes/") and seen.path.count("/") == 3, seen.path
        assert seen.method == "GET" and "x-evil" not in seen.headers
    if value in {"..", ".", ""}:
        assert r.is_error and hosting.seen == []


async def test_a_body_field_in_a_template_is_one_segment_too(tmp_path: Path, payments: Payments) -> None:
    cfg = write_config(tmp_path, billing(payments.url) + '\n[confirm]\nwrite = "agent"\n')
    async with gated(cfg) as c:
        r = await c.call_tool("http_call", {"target": "billing", "operation": "refund",
                                            "body": {"charge": "../refunds/re_1/cancel", "amount": 1}})
        assert r.is_error and "404" in r.content[0].text, "the charge does not exist: the preview says so"
    assert [s.path for s in payments.seen] == ["/v1/charges/..%2Frefunds%2Fre_1%2Fcancel"]
    assert payments.posts("") == []


async def test_redirects_stay_on_the_targets_origin(tmp_path: Path, payments: Payments, hosting: Hosting) -> None:
    cfg = write_config(tmp_path, billing(payments.url))
    async with gated(cfg) as c:
        moved = await call(c, "http_call", target="billing", operation="moved")
        assert moved["result"]["body"]["id"] == "ch_1", "a same-origin redirect of a read is followed"
        payments.elsewhere = f"{hosting.url}/v1/volumes"  # another port on the same host is another origin
        text = await refused(c, "http_call", target="billing", operation="elsewhere")
        assert "another origin" in text and "not followed" in text
    assert hosting.seen == []


async def test_a_created_volume_is_deleted_by_undo(tmp_path: Path, hosting: Hosting) -> None:
    cfg = write_config(tmp_path, hosting_target(hosting.url) + '\n[confirm]\ndestructive = "none"\n')
    async with gated(cfg) as c:
        made = await call(c, "http_call", target="hosting", operation="create_volume", body={"name": "scratch"})
        assert made["effect"] == "write" and made["status"] == "ok"
        vid = made["result"]["body"]["id"]
        assert vid in hosting.volumes
        await call(c, "undo", receipt_id=made["receipt_id"])
    assert vid not in hosting.volumes and "vol_1" in hosting.volumes
    assert [s.path for s in hosting.requests("DELETE")] == [f"/v1/volumes/{vid}"]


async def test_effects_are_never_weaker_than_the_method(tmp_path: Path, hosting: Hosting) -> None:
    weak = hosting_target(hosting.url) + """
        [[targets.hosting.operations]]
        name = "wipe"
        method = "DELETE"
        path = "/v1/volumes/{id}"
        effect = "read"
        compensate = { method = "POST", path = "/v1/volumes" }

        [[targets.hosting.operations]]
        name = "rename"
        method = "PATCH"
        path = "/v1/volumes/{id}"
        effect = "read"
        """
    cfg = write_config(tmp_path, weak + "\n[confirm]\nmin_delay_s = 0\n")
    async with gated(cfg) as c:
        wipe = await call(c, "http_call", target="hosting", operation="wipe", params={"id": "vol_2"}, dry_run=True)
        assert wipe["effect"] == "destructive"
        rename = await call(c, "http_call", target="hosting", operation="rename", params={"id": "vol_2"},
                            body={"name": "x"}, dry_run=True)
        assert rename["effect"] == "irreversible", "a write with no compensate cannot be undone"
        listed = await call(c, "http_call", target="hosting", operation="list_volumes")
        assert listed["effect"] == "read" and len(listed["result"]["body"]) == 2
        targets = await call(c, "targets")
    reaches = next(t for t in targets["targets"] if t["name"] == "hosting")["reaches"]
    assert "delete_volume (DELETE /v1/volumes/{id}): irreversible" in reaches
    assert "wipe (DELETE /v1/volumes/{id}): destructive" in reaches and "list_volumes (GET /v1/volumes): read" in reaches
    assert hosting.requests("DELETE") == [] and hosting.requests("PATCH") == []


async def test_a_read_only_target_refuses_writes_before_sending(tmp_path: Path, hosting: Hosting) -> None:
    cfg = write_config(tmp_path, hosting_target(hosting.url).replace('access = "read-write"', 'access = "read-only"'))
    async with gated(cfg) as c:
        text = await refused(c, "http_call", target="hosting", operation="create_volume", body={"name": "x"})
        assert "read-only" in text
        assert (await call(c, "http_call", target="hosting", operation="list_volumes"))["status"] == "ok"
    assert hosting.requests("POST") == []


async def test_a_compensation_the_response_cannot_fill_is_refused_at_undo_and_said_at_once(tmp_path: Path,
                                                                                        hosting: Hosting) -> None:
    text = hosting_target(hosting.url).replace("{result.id}", "{result.uuid}")
    cfg = write_config(tmp_path, text)
    async with gated(cfg) as c:
        made = await call(c, "http_call", target="hosting", operation="create_volume", body={"name": "scratch"})
        assert "undo will refuse" in made["message"] and "uuid" in made["message"]
        refusal = await refused(c, "undo", receipt_id=made["receipt_id"])
        assert "by hand" in refusal
    assert hosting.requests("DELETE") == [] and made["result"]["body"]["id"] in hosting.volumes
