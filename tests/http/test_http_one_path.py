"""http_call reaches the HTTP adapter only through the gate, for reads, writes, dry runs, confirms and undo."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from apis import Payments
from http_support import billing, gated
from safe_mcp_http import HttpAdapter
from support import call, write_config

from safe_mcp.gate.pipeline import inside_gate

pytestmark = pytest.mark.anyio


async def test_every_adapter_method_runs_inside_the_gate(tmp_path: Path, payments: Payments,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[str, bool]] = []

    def watched(name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        def run(self: HttpAdapter, *args: Any, **kwargs: Any) -> Any:
            seen.append((name, inside_gate()))
            return method(self, *args, **kwargs)
        return run

    for name in ("classify", "preview", "execute", "compensate", "operations"):
        monkeypatch.setattr(HttpAdapter, name, watched(name, getattr(HttpAdapter, name)))
    cfg = write_config(tmp_path, billing(payments.url) + '\n[confirm]\nwrite = "agent"\nmin_delay_s = 0\n')
    async with gated(cfg) as c:
        assert "http_call" in {t.name for t in (await c.list_tools()).tools}
        await call(c, "http_call", target="billing", operation="get_charge", params={"id": "ch_1"})
        await call(c, "http_call", target="billing", operation="refund", body={"charge": "ch_1", "amount": 1},
                   dry_run=True)
        pending = await call(c, "http_call", target="billing", operation="refund", body={"charge": "ch_1", "amount": 1})
        done = await call(c, "confirm", action_id=pending["pending"]["action_id"])
        await call(c, "undo", receipt_id=done["receipt_id"])
        await call(c, "targets")
    assert {name for name, _ in seen} == {"classify", "preview", "execute", "compensate", "operations"}
    assert [name for name, inside in seen if not inside] == []
