"""The adapter contract: what the gate consumes and what an adapter implements.

A third-party adapter subclasses `Adapter`, declares its `kind`, its settings
model and the tools it serves, and registers itself under the entry-point group
`safe_mcp.adapters`. The core never imports a driver; it only calls these methods,
and only from the gate.

Optionally the declarative part (kind, settings model, tools, secret keys, `describe`)
lives in a light `AdapterSpec` subclass of its own, registered under the same name in
`safe_mcp.adapter_specs`, with the `Adapter` subclassing it: then a config is validated,
and `tools/list` answered, without importing the adapter's driver; the adapter itself is
imported when its target is first used.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from safe_mcp.effects import Effect

__all__ = [
    "Adapter",
    "AdapterSettings",
    "AdapterSpec",
    "Budget",
    "Call",
    "Classification",
    "Ledger",
    "Outcome",
    "Preview",
    "Reconciled",
]


class Call(BaseModel):
    """One tool call addressed to one target, exactly as the gate will run it."""

    model_config = ConfigDict(frozen=True)

    target: str
    tool: str
    args: dict[str, Any] = Field(default_factory=dict)


class Classification(BaseModel):
    """What a call would do, decided before anything runs."""

    model_config = ConfigDict(frozen=True)

    effect: Effect
    reason: str
    summary: str = ""
    detail: dict[str, Any] = Field(default_factory=dict)
    compensable: bool = False
    """The adapter will record a compensation (undo) when this call runs. The gate enforces the effect
    table with it: a `write` or `destructive` that is not compensable is run as `irreversible` (human
    by default), decided before anything runs. An adapter that says True and then returns an
    `Outcome` without `compensation` breaches the contract: the receipt says so and the breaker counts it."""


class Preview(BaseModel):
    """What a call would change, measured without committing anything."""

    model_config = ConfigDict(frozen=True)

    effect: Effect
    affected: int | None = None
    sample: list[dict[str, Any]] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)
    fingerprint: str | None = None
    """A digest of exactly which items would change (row identities with their before-images, say).
    At confirm the gate hands it back in `Budget.expect`; the adapter measures again before commit
    and raises `Drifted` when the change would be bigger or touch other items."""


class Outcome(BaseModel):
    """What a call did. `compensation` is the adapter's own record of how to undo it."""

    model_config = ConfigDict(frozen=True)

    result: dict[str, Any] = Field(default_factory=dict)
    affected: int = 0
    compensation: dict[str, Any] | None = None
    summary: str = ""


class Budget(BaseModel):
    """Limits the adapter must enforce while executing, before it commits."""

    model_config = ConfigDict(frozen=True)

    rows_returned: int
    rows_affected: int
    allowed_effect: Effect
    """The strongest effect the gate decided to allow; more measured means `Escalated`."""
    bytes_returned: int = 1_000_000
    """A read returns at most about this many bytes of row data; more sets `truncated`."""
    intent_id: str | None = None
    """The id of the intent receipt written before this execution. An adapter that can journal inside
    the target (`journals = True`) records it, with the compensation, in the same transaction as the
    write, so that `reconcile` can later say whether the write committed."""
    expect: Preview | None = None
    """At confirm: the preview the confirmation was given for. Measure again before commit; raise
    `Drifted` when more items, or other items (`fingerprint`), would change."""


class Reconciled(BaseModel):
    """What the target says became of an intent whose outcome was never recorded (the process died)."""

    model_config = ConfigDict(frozen=True)

    state: Literal["executed", "not_executed", "unknown"]
    outcome: Outcome | None = None
    """For `executed`: what was done, with the compensation journaled beside the write."""
    detail: str = ""
    """For `unknown`: what a human should check before settling it with `safe-mcp reconcile`."""


class Ledger(Protocol):
    """Appends a receipt for work an adapter does on its own, outside a tool call (e.g. delivering
    held mail). Bound by the gate; arguments and reason are scrubbed of secrets. Returns the receipt id.

    Raises:
        StateError: the ledger could not be written.
    """

    def __call__(self, *, tool: str, effect: Effect, outcome: str, reason: str, args: dict[str, Any],
                 affected: int | None = None, refers_to: str | None = None,
                 about: tuple[str, str] | None = None) -> str:
        """`about` = (key, value) of the compensation record of the call this work belongs to (e.g.
        ("outbox_id", "msg_...")): the gate links the new receipt to that call's receipt (`refers_to`)."""
        ...


class AdapterSettings(BaseModel):
    """Base for an adapter's own keys under `[targets.NAME]`. Unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class AdapterSpec:
    """What is known of an adapter without importing its driver: everything the config, `check`,
    `targets` and `tools/list` need. Import only pydantic and safe_mcp's root modules beside it."""

    kind: ClassVar[str]
    settings_model: ClassVar[type[AdapterSettings]]
    tools: ClassVar[frozenset[str]]
    secret_keys: ClassVar[frozenset[str]] = frozenset()
    """Settings keys that hold secret references (`keyring:NAME`, `env:VAR`)."""
    background: ClassVar[bool] = False
    """True when the adapter has work of its own to do while `serve` runs (see `Adapter.run_background`)."""
    requires: ClassVar[tuple[str, ...]] = ()
    """Top-level modules the adapter needs that its spec does not import (its driver). The config load
    finds them, without importing them, so that a missing extra still fails at start."""

    @classmethod
    def secret_refs(cls, settings: AdapterSettings) -> dict[str, str]:
        """Every secret reference of `settings`, by the key its resolved value is found under in
        `secrets` (a dotted key for nested ones, e.g. "headers.Authorization"). The runtime resolves
        them all at start, so a missing secret fails then and every value is scrubbed everywhere."""
        refs = {key: getattr(settings, key, None) for key in sorted(cls.secret_keys)}
        return {key: ref for key, ref in refs.items() if isinstance(ref, str) and ref}

    @classmethod
    def describe(cls, settings: AdapterSettings) -> dict[str, str]:
        """What a target with `settings` reaches and what can be undone (no I/O; for `targets` and `check`).

        Keys `reaches` and `compensation` are shown everywhere; any other keys (allow-lists, hold
        times, ...) are listed by `safe-mcp check` as they are.
        """
        return {}

    @classmethod
    def sandbox_copy(cls, settings: AdapterSettings, base_dir: str, sandbox_dir: str) -> AdapterSettings | None:
        """Settings that point at a disposable copy of the target inside `sandbox_dir`, so that
        `safe-mcp gameday` can play its scenarios for real; None (the default) when the target cannot
        be copied, and then it gets dry runs and decisions only. No other caller."""
        return None


class Adapter(AdapterSpec, ABC):
    """A connection to one target. One instance per configured target.

    Every method may raise `AdapterError` (a message safe for the agent) and
    nothing else on purpose; driver errors are translated here, not in the core.
    """

    def __init__(
        self, name: str, settings: AdapterSettings, secrets: Mapping[str, str], *, base_dir: str, state_dir: str
    ) -> None:
        """`base_dir` is the config file's folder (resolve relative paths against it); `state_dir` is
        safe-mcp's state folder, where an adapter may keep files of its own (an outbox, say)."""
        self.name = name
        self.settings = settings
        self.secrets = secrets
        self.base_dir = base_dir
        self.state_dir = state_dir

    @abstractmethod
    def classify(self, call: Call) -> Classification:
        """Decide the effect of `call` without changing anything."""

    @abstractmethod
    def preview(self, call: Call, classification: Classification, budget: Budget) -> Preview:
        """Measure what `call` would change, in work that is always rolled back."""

    @abstractmethod
    def execute(self, call: Call, classification: Classification, budget: Budget) -> Outcome:
        """Run `call`, enforcing `budget` before commit.

        Raises:
            TooManyRows: more rows than `budget.rows_affected`; nothing was committed.
            Escalated: the engine measured a stronger effect than allowed; nothing was committed.
            AdapterError: the system refused or failed; nothing was committed.
        """

    @abstractmethod
    def compensate(self, compensation: Mapping[str, Any], budget: Budget) -> Outcome:
        """Undo an earlier outcome from its compensation record.

        Checks first that the target is still as the write left it (inserted rows included) and
        refuses, naming the conflict, when it is not. Journals `budget.intent_id` like `execute`.

        Raises:
            AdapterError: the state has moved on so undo would destroy newer data, or it failed.
        """

    def redacted_args(self, call: Call) -> dict[str, Any]:
        """The call's arguments as receipts may record them: members that carry a secret the agent sent
        (a new password, a secret's value) replaced. The default records them as they are."""
        return dict(call.args)

    journals: ClassVar[bool] = False
    """True when `execute` and `compensate` record `budget.intent_id` inside the target, atomically with
    the write, so that `reconcile` can answer `executed` or `not_executed` instead of `unknown`."""

    def reconcile(self, intent_id: str, call: Call) -> Reconciled:
        """Say whether the write of `intent_id` (whose outcome was never recorded) committed.

        Adapters that journal look the intent up in the target's journal: `executed` with the
        journaled compensation, or `not_executed`. The default, for targets that cannot say, is
        `unknown`: the gate then keeps the idempotency key refused until a human settles it.

        Raises:
            AdapterError: the target could not be asked (down); the gate tries again later.
        """
        return Reconciled(state="unknown", detail=f"check {self.kind} target {self.name!r} by hand for the effect of {call.tool}")

    def audit(self) -> dict[str, Any]:
        """Connect and report what the target's credentials could do beyond the configured access.

        Returns `{"can_write": bool | None, "findings": [str, ...]}`; `can_write` None means unknown.
        `safe-mcp check` prints it; `serve` on a network transport refuses a read-only target whose
        credentials can write (unless the adapter's settings allow it).
        """
        return {"can_write": None, "findings": []}

    ledger: Ledger | None = None
    """Set by the gate before any call; None when the adapter runs outside a gate (then record nothing)."""

    def run_background(self, stop: threading.Event) -> None:
        """Do background work (e.g. deliver held mail) until `stop` is set. Runs in its own thread
        when `background` is True; started by `serve` for every such target at start-up."""

    def close(self) -> None:
        """Release connections."""
