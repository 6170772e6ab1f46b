"""Policy: from an effect and a target to allow, confirm, or refuse, always with a reason."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict

from safe_mcp.effects import Effect
from safe_mcp.trust.config import Access, ConfirmMode, ConfirmRules, Target

__all__ = ["Decision", "Verdict", "decide"]


class Verdict(StrEnum):
    ALLOW = "allow"
    CONFIRM = "confirm"
    REFUSE = "refuse"


class Decision(BaseModel):
    model_config = ConfigDict(frozen=True)

    verdict: Verdict
    reason: str
    remedy: str = ""
    confirm_by: ConfirmMode | None = None


def decide(effect: Effect, target: Target, rules: ConfirmRules, why: str = "") -> Decision:
    """The verdict for one effect on one target. Pure: no I/O."""
    detail = f" ({why})" if why else ""
    if effect is Effect.FORBIDDEN:
        return Decision(
            verdict=Verdict.REFUSE,
            reason=f"forbidden{detail}: safe-mcp never runs this, whatever the config",
            remedy="do it outside safe-mcp, with a human at the controls",
        )
    if effect is not Effect.READ and target.access is Access.READ_ONLY:
        return Decision(
            verdict=Verdict.REFUSE,
            reason=f"target {target.name!r} is read-only and this call is a {effect.value}{detail}",
            remedy=f'a human can set access = "read-write" under [targets.{target.name}] in the config',
        )
    mode = rules.for_effect(effect)
    if mode is ConfirmMode.DENY:
        return Decision(
            verdict=Verdict.REFUSE,
            reason=f"{effect.value} calls are denied by the config (confirm.{effect.value} = \"deny\"){detail}",
            remedy=f"a human can change confirm.{effect.value} in the config",
        )
    if mode is ConfirmMode.NONE:
        return Decision(verdict=Verdict.ALLOW, reason=f"{effect.value} allowed on {target.name!r}{detail}")
    return Decision(
        verdict=Verdict.CONFIRM,
        reason=f"{effect.value} on {target.name!r} needs confirmation by {mode.value}{detail}",
        confirm_by=mode,
    )
