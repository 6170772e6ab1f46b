"""One tree of errors; each carries the text a user or an agent can act on."""

from __future__ import annotations

__all__ = [
    "AdapterError",
    "ConfigError",
    "Drifted",
    "Escalated",
    "Refused",
    "SafeMcpError",
    "StateError",
    "TargetUnavailable",
    "TooManyRows",
]

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from safe_mcp.adapter import Preview
    from safe_mcp.effects import Effect


class SafeMcpError(Exception):
    """Base of every error safe-mcp raises on purpose."""


class ConfigError(SafeMcpError):
    """A config or policy file is invalid: names the file, the key and the fix."""

    def __init__(self, file: str, key: str, problem: str, fix: str = "") -> None:
        self.file, self.key, self.problem, self.fix = file, key, problem, fix
        where = f"{file}: {key}" if key else file
        text = f"{where}: {problem}"
        if fix:
            text += f" (fix: {fix})"
        super().__init__(text)


class Refused(SafeMcpError):
    """The gate refused a call. `reason` says why, `remedy` what would allow it."""

    def __init__(self, reason: str, remedy: str = "", receipt_id: str | None = None) -> None:
        self.reason, self.remedy, self.receipt_id = reason, remedy, receipt_id
        super().__init__(reason)

    def text(self) -> str:
        parts = [f"refused: {self.reason}"]
        if self.remedy:
            parts.append(f"to proceed: {self.remedy}")
        if self.receipt_id:
            parts.append(f"receipt: {self.receipt_id}")
        return ". ".join(parts)


class AdapterError(SafeMcpError):
    """A driver or service error translated at the adapter boundary.

    The message is safe to show to the agent: no DSNs, passwords or internals. `remedy`, when the adapter
    knows it, says what would let the call (or its undo) go through; the gate shows it as the way forward.
    """

    def __init__(self, message: str, remedy: str = "") -> None:
        self.remedy = remedy
        super().__init__(message)


class TargetUnavailable(AdapterError):
    """The target cannot be used right now (down, unreachable, missing, locked by a crashed writer);
    the call itself may be fine. `remedy` says what to check. Never blamed on the statement."""


class TooManyRows(AdapterError):
    """A write touched more rows than `rows_affected` allows; it was rolled back."""

    def __init__(self, affected: int, limit: int) -> None:
        self.affected, self.limit = affected, limit
        super().__init__(
            f"the write would affect {affected} rows, over the limit of {limit}; it was rolled back"
        )


class Escalated(SafeMcpError):
    """The engine measured a stronger effect than the classifier predicted.

    Raised by an adapter before commit (the work is rolled back); the gate
    re-decides with `effect` and, if confirmation is needed, uses `preview`.
    """

    def __init__(self, effect: Effect, reason: str, preview: Preview) -> None:
        self.effect, self.reason, self.preview = effect, reason, preview
        super().__init__(reason)


class Drifted(Escalated):
    """At confirm, the target no longer matches the preview the confirmation was given for: the change
    would touch more items, or other ones. Raised before commit (rolled back); the gate makes a new
    pending action from `preview`, which is the change as it now stands."""


class StateError(SafeMcpError):
    """The state store (receipts, pending actions) could not be read or written."""
