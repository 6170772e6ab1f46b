"""The gate is the one path: every tool that reaches an adapter does so from inside the gate."""

from __future__ import annotations

import ast
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from mcp import Client
from support import write_config

import safe_mcp.registry
from safe_mcp.adapter import Adapter, AdapterSettings, Budget, Call, Classification, Outcome, Preview
from safe_mcp.effects import Effect
from safe_mcp.faces.server import build_server
from safe_mcp.gate.pipeline import inside_gate
from safe_mcp.gate.runtime import Runtime
from safe_mcp.trust.config import load_config

pytestmark = pytest.mark.anyio

SEEN: list[tuple[str, str, bool]] = []


class ProbeSettings(AdapterSettings):
    pass


class ProbeAdapter(Adapter):
    """A real adapter that records, for every method call, whether the gate was on the stack."""

    kind = "probe"
    settings_model = ProbeSettings
    tools = frozenset({"sql_query", "sql_execute", "sql_schema", "aws_call", "email_send", "email_outbox", "http_call"})

    def _seen(self, method: str, tool: str) -> None:
        SEEN.append((method, tool, inside_gate()))

    def classify(self, call: Call) -> Classification:
        self._seen("classify", call.tool)
        effect = Effect.READ if call.tool in {"sql_query", "sql_schema", "email_outbox"} else Effect.WRITE
        return Classification(effect=effect, reason="probe", compensable=effect is Effect.WRITE)

    def preview(self, call: Call, classification: Classification, budget: Budget) -> Preview:
        self._seen("preview", call.tool)
        return Preview(effect=classification.effect, affected=1)

    def execute(self, call: Call, classification: Classification, budget: Budget) -> Outcome:
        self._seen("execute", call.tool)
        result: dict[str, Any] = {"columns": [], "rows": [], "row_count": 0, "truncated": False, "tables": []}
        return Outcome(result=result, affected=1, compensation={"affected": 1})

    def compensate(self, compensation: Mapping[str, Any], budget: Budget) -> Outcome:
        self._seen("compensate", "undo")
        return Outcome(affected=1)


ARGS: dict[str, dict[str, Any]] = {
    "sql_query": {"sql": "x"}, "sql_execute": {"sql": "x"}, "sql_schema": {},
    "aws_call": {"service": "s3", "operation": "PutObject"},
    "email_send": {"to": ["a@example.com"], "subject": "s", "body": "b"}, "email_outbox": {},
    "http_call": {"operation": "x"},
}


async def test_every_tool_reaches_adapters_only_through_the_gate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = safe_mcp.registry.load_adapter

    def load(kind: str, **kw: Any) -> type[Adapter]:
        return ProbeAdapter if kind == "probe" else real(kind, **kw)

    monkeypatch.setattr(safe_mcp.registry, "load_adapter", load)
    cfg = write_config(tmp_path, '[targets.p]\nkind = "probe"\naccess = "read-write"\n')
    SEEN.clear()
    async with Client(build_server(Runtime(load_config(cfg)))) as client:
        listed = {t.name for t in (await client.list_tools()).tools}
        assert listed == {"targets", "receipts", "confirm", "undo", *ARGS}
        last_receipt = None
        for tool, args in ARGS.items():
            r = await client.call_tool(tool, {"target": "p", **args})
            assert not r.is_error, (tool, r.content)
            if tool == "sql_execute":
                last_receipt = r.structured_content["receipt_id"]
        r = await client.call_tool("undo", {"receipt_id": last_receipt})
        assert not r.is_error, r.content
        for tool in ("targets", "receipts"):
            assert not (await client.call_tool(tool, {})).is_error
    reached = {tool for _m, tool, _inside in SEEN}
    assert reached == {*ARGS, "undo"}
    outside = [(m, t) for m, t, inside in SEEN if not inside]
    assert outside == [], f"adapter methods called outside the gate: {outside}"


def test_the_server_module_never_touches_an_adapter() -> None:
    """Structural half of the proof: server.py names no adapter method and imports no adapter."""
    source = Path(__file__).resolve().parents[2] / "safe_mcp" / "faces" / "server.py"
    tree = ast.parse(source.read_text())
    attrs = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    assert not attrs & {"classify", "preview", "execute", "compensate", "_adapter", "_adapters"}
    imports = {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom | ast.Import) for a in n.names}
    assert not any(name.startswith("safe_mcp_") for name in imports)
