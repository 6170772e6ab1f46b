"""The JSON schema of the config file, generated from the models (kept in config/ by a test)."""

from __future__ import annotations

from typing import Any

from safe_mcp.registry import available_kinds, load_spec
from safe_mcp.trust.config import (
    Access,
    ApprovalSettings,
    BreakerRules,
    ConfirmRules,
    Limits,
    LimitsOverride,
    ReceiptSettings,
    ServerSettings,
    StateSettings,
    TelemetrySettings,
)

__all__ = ["config_schema"]


def config_schema() -> dict[str, Any]:
    defs: dict[str, Any] = {}

    def ref(model: Any, name: str) -> dict[str, str]:
        schema = model.model_json_schema(ref_template="#/$defs/{model}")
        defs.update(schema.pop("$defs", {}))
        defs[name] = schema
        return {"$ref": f"#/$defs/{name}"}

    common = {
        "access": {"enum": [a.value for a in Access], "default": Access.READ_ONLY.value},
        "limits": ref(LimitsOverride, "LimitsOverride"),
    }
    variants = []
    for kind in available_kinds():
        settings = load_spec(kind).settings_model.model_json_schema()
        props = {"kind": {"const": kind}, **common, **settings.get("properties", {})}
        variants.append({
            "type": "object", "title": f"{kind} target", "properties": props,
            "required": ["kind", *settings.get("required", [])], "additionalProperties": False,
        })
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "safe-mcp config",
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "targets": {"type": "object", "additionalProperties": {"oneOf": variants}},
            "limits": ref(Limits, "Limits"),
            "confirm": ref(ConfirmRules, "ConfirmRules"),
            "state": ref(StateSettings, "StateSettings"),
            "server": ref(ServerSettings, "ServerSettings"),
            "approvals": ref(ApprovalSettings, "ApprovalSettings"),
            "breaker": ref(BreakerRules, "BreakerRules"),
            "receipts": ref(ReceiptSettings, "ReceiptSettings"),
            "telemetry": ref(TelemetrySettings, "TelemetrySettings"),
        },
        "required": ["targets"],
        "$defs": defs,
    }
