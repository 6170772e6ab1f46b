"""The hook contract: work done before a statement runs (a snapshot, a dump) and undone with it.

A hook is configured on a target (`[[targets.NAME.hooks]]`, `HookSpec`) and runs before statements
of the kinds it names. A hook in code subclasses `Hook` and registers itself under the entry-point
group `safe_mcp.hooks`, named `NAME` (any target) or `KIND.NAME` (targets of one adapter kind, e.g.
`sqlite.snapshot`, which the built-in `run = "snapshot"` finds on a sqlite target). The gate calls its
steps in order: `capture`, then `verify`, before the statement; `verify`, then `compensate`, at undo.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, field_validator

from safe_mcp.errors import AdapterError

if TYPE_CHECKING:
    from safe_mcp.adapter import Adapter

__all__ = ["GROUP", "STATEMENT_KINDS", "Artifact", "Hook", "HookContext", "HookFailed", "HookSpec", "HooksSetting",
           "check_hooks", "load_hook", "safe_table"]

GROUP = "safe_mcp.hooks"

STATEMENT_KINDS = frozenset({
    "DROP TABLE", "TRUNCATE", "DELETE", "UPDATE", "INSERT", "ALTER TABLE", "CREATE TABLE", "CREATE INDEX",
    "DROP INDEX", "DROP VIEW", "DROP TRIGGER",
})
"""What `before` may name: statement kinds as the SQL adapters classify them."""

_PLACEHOLDERS = ("{table}", "{artifact}")
_NAME = re.compile(r"[a-z][a-z0-9_\-]{0,62}")
# A table name a hook may be given: identifiers only (optionally schema-qualified), so it can never
# become an option (-x) or a path (../) of the command it is passed to.
_TABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_$]{0,62}(\.[A-Za-z_][A-Za-z0-9_$]{0,62})?")


class HookFailed(AdapterError):
    """A hook step failed. Before a statement, a failed `required` hook means the statement does not run."""


class HookSpec(BaseModel):
    """One `[[targets.NAME.hooks]]` entry."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    before: tuple[str, ...] = Field(min_length=1, description='statement kinds it runs before, e.g. ["DROP TABLE", '
                                                              '"TRUNCATE", "DELETE"]')
    run: str | tuple[str, ...] = Field(description='a hook in code by name ("snapshot" is built in), or a command '
                                                   'as an argv list, never a shell: "{table}" and "{artifact}" are '
                                                   'replaced when they are a whole item')
    restore: tuple[str, ...] = Field((), description="for a command hook: the argv that restores from {artifact} "
                                                     "at undo (none: undo names the artifact for a hand restore)")
    required: bool = Field(True, description="the statement does not run when this hook fails")
    timeout_s: float = Field(300, gt=0, description="a command hook running longer is stopped (and has failed)")

    @field_validator("before")
    @classmethod
    def _kinds(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = sorted(set(value) - STATEMENT_KINDS)
        if unknown:
            raise ValueError(f"unknown statement kind {unknown[0]!r}; use {', '.join(sorted(STATEMENT_KINDS))}")
        return value

    @field_validator("run")
    @classmethod
    def _run(cls, value: str | tuple[str, ...]) -> str | tuple[str, ...]:
        if isinstance(value, str):
            if not _NAME.fullmatch(value):
                raise ValueError(f"hook name {value!r} must be lower-case letters, digits, _ or - (or give an argv list)")
        elif not value or not value[0]:
            raise ValueError("a command hook needs an argv list whose first item is the program")
        else:
            for item in value:
                if item not in _PLACEHOLDERS and any(p in item for p in _PLACEHOLDERS):
                    raise ValueError(f"{item!r}: {{table}} and {{artifact}} are replaced only as whole argv items; "
                                     "give each as its own item")
        return value

    @property
    def name(self) -> str:
        return self.run if isinstance(self.run, str) else Path(self.run[0]).name


_ARGV = {"type": "array", "items": {"type": "string"}}
HooksSetting = Annotated[tuple[HookSpec, ...], WithJsonSchema({
    "type": "array",
    "description": "hooks that run before statements of the kinds they name (see the README: Hooks)",
    "items": {
        "type": "object", "additionalProperties": False, "required": ["before", "run"],
        "properties": {
            "before": {"type": "array", "minItems": 1, "items": {"enum": sorted(STATEMENT_KINDS)}},
            "run": {"anyOf": [{"type": "string", "pattern": f"^{_NAME.pattern}$"}, {**_ARGV, "minItems": 1}]},
            "restore": _ARGV,
            "required": {"type": "boolean", "default": True},
            "timeout_s": {"type": "number", "exclusiveMinimum": 0, "default": 300},
        },
    },
})]
"""The `hooks` key of an adapter's settings (`hooks: HooksSetting = ()`); the schema is spelled out so that
the config's JSON schema holds it whole."""


@dataclass(frozen=True)
class HookContext:
    """What a hook step is given. `adapter` is the target's live adapter (a hook of one kind may use it
    to reach the target as safe-mcp does); `artifact` is the file the hook writes, under the state
    directory, not yet existing at `capture`."""

    target: str
    kind: str
    statement: str
    table: str | None
    intent_id: str | None
    artifact: Path
    spec: HookSpec
    adapter: Adapter
    base_dir: str


class Artifact(BaseModel):
    """What `capture` made: recorded with the call's compensation, handed back to `verify` and `compensate`."""

    model_config = ConfigDict(frozen=True)

    hook: str
    path: str
    statement: str
    table: str | None = None
    detail: dict[str, Any] = Field(default_factory=dict)


class Hook(ABC):
    """A hook in code. One instance per step; keep no state between steps (it lives in the artifact)."""

    name: ClassVar[str]
    kinds: ClassVar[frozenset[str]] = frozenset()
    """Adapter kinds it works on; empty means any."""

    def preview(self, ctx: HookContext) -> str:
        """What `capture` would do, for dry runs and pending actions; must change nothing."""
        return f"hook {self.name} runs before {ctx.statement}" + (f" on {ctx.table}" if ctx.table else "")

    @abstractmethod
    def capture(self, ctx: HookContext) -> Artifact:
        """Make the artifact at `ctx.artifact`, before the statement runs.

        Raises:
            HookFailed: nothing usable was made (a required hook then stops the statement).
        """

    def verify(self, ctx: HookContext, artifact: Artifact) -> None:
        """Check the artifact is whole: after `capture` (before the statement) and before `compensate`.
        The default checks that the file exists and is not empty.

        Raises:
            HookFailed: the artifact is missing or incomplete.
        """
        path = Path(artifact.path)
        if not path.is_file() or path.stat().st_size == 0:
            raise HookFailed(f"hook {self.name} left no artifact at {path}",
                             "check the hook writes its output to {artifact}")

    def compensate(self, ctx: HookContext, artifact: Artifact) -> str:
        """Restore the target from the artifact at undo; returns what was done. Never destroys data newer
        than the artifact: refuses instead. The default cannot restore.

        Raises:
            HookFailed: nothing was restored; the message says how to restore by hand.
        """
        raise HookFailed(f"hook {self.name} cannot restore by itself",
                         f"restore by hand from the artifact {artifact.path}")


def safe_table(name: str | None) -> str | None:
    """`name` when it is a plain (optionally schema-qualified) identifier a hook may be given, else None."""
    return name if name is not None and _TABLE.fullmatch(name) else None


def check_hooks(kind: str, specs: tuple[HookSpec, ...]) -> tuple[HookSpec, ...]:
    """`specs` when every hook in code they name is installed for `kind` (for a settings validator).

    Raises:
        ValueError: one is not (the config error names it and what to install).
    """
    for spec in specs:
        if isinstance(spec.run, str):
            try:
                load_hook(spec.run, kind)
            except HookFailed as exc:
                raise ValueError(f"{exc}; {exc.remedy}" if exc.remedy else str(exc)) from None
    return specs


def load_hook(name: str, kind: str) -> type[Hook]:
    """The hook in code registered as `KIND.NAME` (preferred) or `NAME` under `safe_mcp.hooks`.

    Raises:
        HookFailed: none is installed, it cannot be imported, or it is not a `Hook` for `kind`.
    """
    eps = {ep.name: ep for ep in entry_points(group=GROUP) if ep.name in (f"{kind}.{name}", name)}
    ep = eps.get(f"{kind}.{name}") or eps.get(name)
    if ep is None:
        raise HookFailed(f"no hook named {name!r} is installed for {kind} targets",
                         f"install the package that provides it (entry-point group {GROUP}) or fix `run`")
    try:
        cls = ep.load()
    except ImportError as exc:
        raise HookFailed(f"hook {name!r} cannot be imported: {exc}", "install its dependencies") from None
    if not (isinstance(cls, type) and issubclass(cls, Hook)):
        raise HookFailed(f"entry point {ep.name!r} is not a safe_mcp Hook")
    if cls.kinds and kind not in cls.kinds:
        raise HookFailed(f"hook {name!r} works on {', '.join(sorted(cls.kinds))} targets, not {kind}")
    return cls
