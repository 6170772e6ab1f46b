"""Caps, keys and the pure parts: byte caps on reads, header-safe keys, templates, reconcile that never re-sends."""

from __future__ import annotations

from pathlib import Path

import pytest
from apis import Hosting, Payments
from http_support import billing, gated, hosting_target
from safe_mcp_http.templates import TemplateError, fill_body, render_path
from support import call, refused, write_config

from safe_mcp.adapter import Call
from safe_mcp.trust.config import load_config

pytestmark = pytest.mark.anyio


async def test_a_large_response_is_cut_at_the_byte_cap(tmp_path: Path, payments: Payments) -> None:
    cfg = write_config(tmp_path, billing(payments.url) + "\n[limits]\nbytes_returned = 4096\n")
    async with gated(cfg) as c:
        big = await call(c, "http_call", target="billing", operation="big")
    assert big["result"]["truncated"] is True and len(big["result"]["body"]) == 4096


async def test_keys_that_are_not_header_safe_are_refused_before_sending(tmp_path: Path, payments: Payments) -> None:
    cfg = write_config(tmp_path, billing(payments.url))
    async with gated(cfg) as c:
        for key in ("k\r\nX-Evil: 1", "k\n", "ключ", "k" * 201):
            text = await refused(c, "http_call", target="billing", operation="refund",
                                 body={"charge": "ch_1", "amount": 1}, idempotency_key=key)
            assert "idempotency_key" in text
    assert payments.seen == []


async def test_an_operation_declared_forbidden_never_runs(tmp_path: Path, hosting: Hosting) -> None:
    text = hosting_target(hosting.url) + """
        [[targets.hosting.operations]]
        name = "purge"
        method = "GET"
        path = "/v1/volumes"
        effect = "forbidden"
        """
    cfg = write_config(tmp_path, text)
    async with gated(cfg) as c:
        assert "forbidden" in await refused(c, "http_call", target="hosting", operation="purge")
    assert hosting.seen == []


def test_templates_fill_one_encoded_segment_per_value() -> None:
    path, used = render_path("/v1/{id}/x/{body.a.b}/{result.items.0}", {"id": "a/b", "q": 1},
                             {"body": {"a": {"b": "?#"}}, "result": {"items": ["..x"]}})
    assert path == "/v1/a%2Fb/x/%3F%23/..x" and used == {"id"}
    for bad in ("..", ".", ""):
        with pytest.raises(TemplateError):
            render_path("/v1/{id}", {"id": bad}, {})
    with pytest.raises(TemplateError):
        render_path("/v1/{result.id}", {}, {"result": {"no": 1}})
    with pytest.raises(TemplateError):
        render_path("/v1/{id}", {"id": {"nested": 1}}, {})
    assert fill_body({"refund": "{result.id}", "n": "{result.n}", "note": "undo {result.id}"}, {},
                     {"result": {"id": "re_1", "n": 3}}) == {"refund": "re_1", "n": 3, "note": "undo re_1"}


def test_reconcile_is_unknown_and_names_the_key_to_look_up(tmp_path: Path) -> None:
    """A crash between send and outcome: safe-mcp never sends again to find out; a human asks the API."""
    config = load_config(write_config(tmp_path, billing("http://127.0.0.1:9")))
    target = config.targets["billing"]
    adapter = target.adapter_cls("billing", target.settings, {}, base_dir=str(tmp_path), state_dir=str(tmp_path))
    verdict = adapter.reconcile("rcpt_intent", Call(target="billing", tool="http_call",
                                                    args={"operation": "refund", "idempotency_key": "order-9"}))
    assert verdict.state == "unknown" and "Idempotency-Key: order-9" in verdict.detail and "refund" in verdict.detail
    verdict = adapter.reconcile("rcpt_intent", Call(target="billing", tool="http_call", args={"operation": "refund"}))
    assert "Idempotency-Key: rcpt_intent" in verdict.detail
    verdict = adapter.reconcile("rcpt_undo", Call(target="billing", tool="undo", args={"receipt_id": "rcpt_1"}))
    assert verdict.state == "unknown" and "rcpt_1" in verdict.detail


async def test_a_preview_count_over_rows_affected_sends_nothing(tmp_path: Path, hosting: Hosting) -> None:
    text = hosting_target(hosting.url) + """
        [[targets.hosting.operations]]
        name = "reshard"
        method = "POST"
        path = "/v1/volumes"
        preview = { method = "GET", path = "/v1/stats", count = "volumes" }
        compensate = { method = "DELETE", path = "/v1/volumes/{result.id}" }

        [limits]
        rows_affected = 1
        """
    cfg = write_config(tmp_path, text)
    async with gated(cfg) as c:
        dry = await call(c, "http_call", target="hosting", operation="reshard", body={"name": "x"}, dry_run=True)
        assert dry["affected"] == 2
        text = await refused(c, "http_call", target="hosting", operation="reshard", body={"name": "x"})
        assert "over the limit of 1" in text
    assert hosting.requests("POST") == []


async def test_a_trickling_response_is_cut_at_the_timeout(tmp_path: Path, payments: Payments) -> None:
    import time

    payments.trickle = True
    cfg = write_config(tmp_path, billing(payments.url, timeout=1))
    started = time.monotonic()
    async with gated(cfg) as c:
        text = await refused(c, "http_call", target="billing", operation="big")
    assert "no answer" in text and time.monotonic() - started < 8


def test_the_header_references_are_named_for_the_core_and_their_values_used(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, billing("http://127.0.0.1:9")))
    target = config.targets["billing"]
    assert target.adapter_cls.secret_refs(target.settings) == {"headers.Authorization": "env:BILLING_TOKEN"}
    adapter = target.adapter_cls("billing", target.settings, {"headers.Authorization": "Bearer from-the-core-0123"},
                                 base_dir=str(tmp_path), state_dir=str(tmp_path))
    assert adapter.sender._headers == {"Authorization": "Bearer from-the-core-0123"}
