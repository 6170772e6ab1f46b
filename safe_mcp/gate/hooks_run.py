"""Running a target's hooks: before a statement (`run_hooks`) and at its undo (`undo_hooks`).

The pipeline calls `run_hooks` after the intent receipt and before `execute`; a required hook that
fails raises `HookFailed` and the statement does not run. What the hooks made goes into the call's
compensation under `"hooks"`, so that `undo` can hand each artifact back to its hook.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from safe_mcp.adapter import Adapter, Budget, Classification, Outcome
from safe_mcp.effects import Effect
from safe_mcp.errors import AdapterError, StateError
from safe_mcp.hooks import STATEMENT_KINDS, Artifact, Hook, HookContext, HookFailed, HookSpec, load_hook, safe_table
from safe_mcp.state.receipts import new_id
from safe_mcp.trust.config import Config, Target

__all__ = ["CommandHook", "HookRun", "hook_notes", "run_hooks", "split_compensation", "statement_of", "undo_hooks",
           "undo_with_hooks"]

_TAIL = 400


@dataclass
class HookRun:
    """What the hooks before one statement made (`artifacts`) and which optional ones failed (`failures`)."""

    artifacts: list[dict[str, Any]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def attach(self, outcome: Outcome) -> Outcome:
        """`outcome` with the artifacts in its compensation (`"hooks"`) and the hooks named in its summary."""
        if not self.artifacts and not self.failures:
            return outcome
        update: dict[str, Any] = {"summary": "; ".join([outcome.summary or "done", *self._said()])}
        if self.artifacts:
            update["compensation"] = {**(outcome.compensation or {}), "hooks": self.artifacts}
        return outcome.model_copy(update=update)

    def note(self, reason: str) -> str:
        """The receipt's reason with what the hooks did (and which failed) appended."""
        return "; ".join([reason, *self._said()])

    def _said(self) -> list[str]:
        made = [f"hook {a['name']} kept {a['artifact']}" for a in self.artifacts]
        return made + [f"hook failed (not required, so the statement ran): {f}" for f in self.failures]


def statement_of(classification: Classification) -> tuple[frozenset[str], list[str | None]]:
    """The statement kinds (as `HookSpec.before` names them) and the tables of a SQL classification.

    Tables are None where the classification does not name one; a hook given None for `{table}` fails.
    """
    d = classification.detail
    op = d.get("op")
    if op == "drop_table":
        return frozenset({"DROP TABLE"}), _tables(d.get("tables", [d.get("table")]))
    if op == "truncate":
        return frozenset({"TRUNCATE"}), _tables(d.get("tables", []))
    if op == "dml":  # sqlite: the verbs of the statement itself, and every table it writes
        return frozenset(str(v) for v in d.get("verbs", [])) & STATEMENT_KINDS, _tables(d.get("tables", []))
    if op in {"insert", "update", "delete"}:  # postgres
        return frozenset({str(op).upper()}), _tables([d])
    if op in {"create", "drop_object"}:  # the object's name is a table's only when it is a table
        verb, kind = "CREATE" if op == "create" else "DROP", str(d.get("type", "")).upper()
        return frozenset({f"{verb} {kind}"}) & STATEMENT_KINDS, _tables([d] if kind == "TABLE" else [])
    # Otherwise the summary names it: "TRUNCATE a" or, for some DDL, the parser's "AlterTable".
    summary = " ".join(re.sub(r"(?<=[a-z])(?=[A-Z])", " ", classification.summary).upper().split())
    found = [k for k in STATEMENT_KINDS if summary.startswith(k)]
    return (frozenset({max(found, key=len)}) if found else frozenset()), [None]


def _tables(items: Sequence[Any]) -> list[str | None]:
    out: list[str | None] = []
    for item in items:
        if isinstance(item, Mapping):
            name = item.get("name")
            schema = item.get("schema")
            item = f"{schema}.{name}" if schema and name else name
        out.append(item if isinstance(item, str) else None)
    return out or [None]


def _matching(target: Target, classification: Classification) -> list[tuple[HookSpec, str, str | None]]:
    specs: Sequence[HookSpec] = getattr(target.settings, "hooks", ())
    if not specs:
        return []
    kinds, tables = statement_of(classification)
    return [(spec, kind, table) for spec in specs for kind in sorted(kinds & set(spec.before)) for table in tables]


def _hook(spec: HookSpec, kind: str) -> Hook:
    return CommandHook() if not isinstance(spec.run, str) else load_hook(spec.run, kind)()


def hook_notes(config: Config, target: Target, adapter: Adapter, classification: Classification) -> list[str]:
    """What the hooks would do before this statement (for a preview's notes); runs nothing."""
    notes = []
    for spec, statement, table in _matching(target, classification):
        ctx = _context(config, target, adapter, spec, statement, table, None, 0)
        try:
            notes.append(_hook(spec, target.kind).preview(ctx) + ("" if spec.required else " (not required)"))
        except HookFailed as exc:
            notes.append(f"hook {spec.name} would fail: {exc}")
    return notes


def run_hooks(config: Config, target: Target, adapter: Adapter, classification: Classification,
              intent_id: str | None) -> HookRun:
    """Run every hook of `target` whose `before` names this statement's kind: capture, then verify.

    Call it after the intent receipt, before `execute`, inside the same `try` (errors are AdapterErrors).

    Raises:
        HookFailed: a `required` hook failed; the statement must not run. The message names the hook.
    """
    done = HookRun()
    for n, (spec, statement, table) in enumerate(_matching(target, classification)):
        ctx = _context(config, target, adapter, spec, statement, table, intent_id, n)
        try:
            hook = _hook(spec, target.kind)
            if table is not None and safe_table(table) is None:
                raise HookFailed(f"table name {table!r} is not a plain identifier, so no hook is given it")
            _artifacts_dir(config)
            artifact = hook.capture(ctx)
            hook.verify(ctx, artifact)
        except HookFailed as exc:
            what = f"hook {spec.name} before {statement}" + (f" on {table}" if table else "") + f": {exc}"
            _receipt(adapter, spec, statement, table, intent_id, "hook_failed",
                     what + ("; the statement was not run" if spec.required else "; not required, so it ran"), None)
            if spec.required:
                raise HookFailed(f"required {what}; the statement was not run",
                                 exc.remedy or "fix the hook (or set required = false), then retry") from None
            done.failures.append(what)
            continue
        _receipt(adapter, spec, statement, table, intent_id, "captured",
                 f"hook {spec.name} kept {artifact.path} before {statement}", artifact.path)
        done.artifacts.append({"name": spec.name, "run": _run_key(spec), "artifact": artifact.path,
                               "statement": artifact.statement, "table": artifact.table, "detail": artifact.detail})
    return done


def _receipt(adapter: Adapter, spec: HookSpec, statement: str, table: str | None, intent_id: str | None,
             outcome: str, reason: str, artifact: str | None) -> None:
    """A receipt of its own for each hook run, referring to the statement's intent (through the gate's
    ledger). A capture that cannot be receipted has failed.

    Raises:
        HookFailed: the receipt could not be written.
    """
    if adapter.ledger is None:
        return
    try:
        adapter.ledger(tool=f"hook {spec.name}", effect=Effect.READ, outcome=outcome, reason=reason,
                       args={"statement": statement, "table": table, "artifact": artifact, "required": spec.required},
                       refers_to=intent_id)
    except StateError as exc:
        raise HookFailed(f"the hook's receipt could not be written: {exc}", "check the state store") from None


def split_compensation(data: Mapping[str, Any]) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """The adapter's part of a compensation (None when only hooks recorded one) and the hooks' part."""
    own = {k: v for k, v in data.items() if k != "hooks"}
    hooks = data.get("hooks")
    return (own or None), (list(hooks) if isinstance(hooks, list) else [])


def undo_with_hooks(config: Config, target: Target, adapter: Adapter, data: Mapping[str, Any],
                    budget: Budget) -> Outcome:
    """What `Gate.undo` calls instead of `adapter.compensate(data, budget)`: the adapter's own
    compensation, then the hooks' (`undo_hooks`). When the adapter cannot undo (its kept copy is gone,
    say), the hooks' artifacts are the second line: they restore what they can without overwriting.

    Raises:
        AdapterError: neither the adapter nor the hooks could undo; nothing was changed.
    """
    own, hooks = split_compensation(data)
    if not hooks:
        return adapter.compensate(data, budget)
    outcome: Outcome | None = None
    failed: AdapterError | None = None
    if own is not None:
        try:
            outcome = adapter.compensate(own, budget)
        except AdapterError as exc:
            failed = exc
    try:
        restored = undo_hooks(config, target, adapter, hooks, budget.intent_id, outcome)
    except HookFailed as exc:
        if failed is None:
            raise
        raise AdapterError(f"{failed}; and {exc}") from None
    if failed is not None:
        return restored.model_copy(update={"summary": f"the {target.kind} undo failed ({failed}), so the hooks "
                                                      f"restored instead: {restored.summary}"})
    return restored


def undo_hooks(config: Config, target: Target, adapter: Adapter, records: Sequence[Mapping[str, Any]],
               intent_id: str | None, outcome: Outcome | None) -> Outcome:
    """At undo, after the adapter's own compensation (`outcome`, None when there was none): each hook,
    last first, verifies its artifact and restores from it. The hook is looked up in the target's
    current config (a hook no longer configured is not run: the state store never chooses a command).

    When the adapter already undid the write, a hook that cannot restore is noted, not fatal.

    Raises:
        HookFailed: there was no adapter compensation and a hook could not restore; nothing else ran.
    """
    said = [outcome.summary] if outcome is not None and outcome.summary else []
    specs: Sequence[HookSpec] = getattr(target.settings, "hooks", ())
    for n, record in enumerate(reversed(records)):
        artifact = Artifact(hook=str(record.get("name")), path=str(record.get("artifact")),
                            statement=str(record.get("statement")), table=record.get("table"),
                            detail=dict(record.get("detail") or {}))
        try:
            spec = next((s for s in specs if _run_key(s) == record.get("run")), None)
            if spec is None:
                raise HookFailed(f"hook {artifact.hook} is no longer configured on target {target.name!r}",
                                 f"restore by hand from the artifact {artifact.path}")
            ctx = _context(config, target, adapter, spec, artifact.statement, artifact.table, intent_id, n)
            ctx = replace(ctx, artifact=Path(artifact.path))
            hook = _hook(spec, target.kind)
            hook.verify(ctx, artifact)
            said.append(hook.compensate(ctx, artifact))
        except HookFailed as exc:
            if outcome is None:
                raise HookFailed(f"hook {artifact.hook} could not restore: {exc}",
                                 exc.remedy or f"restore by hand from the artifact {artifact.path}") from None
            said.append(f"hook {artifact.hook} did not restore ({exc}" + (f"; {exc.remedy})" if exc.remedy else ")"))
    base = outcome or Outcome()
    return base.model_copy(update={"summary": "; ".join(said) or base.summary})


def _run_key(spec: HookSpec) -> str | list[str]:
    return spec.run if isinstance(spec.run, str) else list(spec.run)


def _artifacts_dir(config: Config) -> Path:
    path = config.state_dir / "artifacts"
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise HookFailed(f"cannot make the artifacts folder {path}: {exc.strerror}",
                         "make the state directory writable") from None
    return path


def _context(config: Config, target: Target, adapter: Adapter, spec: HookSpec, statement: str, table: str | None,
             intent_id: str | None, n: int) -> HookContext:
    stem = re.sub(r"[^A-Za-z0-9_.\-]", "_", f"{intent_id or new_id('intent')}-{n}-{spec.name}-{table or 'all'}")
    return HookContext(target=target.name, kind=target.kind, statement=statement, table=table, intent_id=intent_id,
                       artifact=config.state_dir / "artifacts" / stem, spec=spec, adapter=adapter,
                       base_dir=config.base_dir)


class CommandHook(Hook):
    """`run = ["prog", "arg", "{table}", "{artifact}"]`: a program run directly (never a shell), with
    `{table}` and `{artifact}` replaced only where they are a whole argv item. It captures; it restores
    only when the hook has a `restore` argv."""

    name = "command"

    def preview(self, ctx: HookContext) -> str:
        return f"would run {ctx.spec.name} before {ctx.statement}" + (f" on {ctx.table}" if ctx.table else "")

    def capture(self, ctx: HookContext) -> Artifact:
        argv = _argv(ctx, tuple(ctx.spec.run))
        writes = "{artifact}" in ctx.spec.run
        _exec(ctx, argv)
        if writes and ctx.artifact.exists():
            ctx.artifact.chmod(0o600)
        return Artifact(hook=ctx.spec.name, path=str(ctx.artifact), statement=ctx.statement, table=ctx.table,
                        detail={"writes_artifact": writes})

    def verify(self, ctx: HookContext, artifact: Artifact) -> None:
        if artifact.detail.get("writes_artifact"):
            super().verify(ctx, artifact)

    def compensate(self, ctx: HookContext, artifact: Artifact) -> str:
        if not ctx.spec.restore:
            return super().compensate(ctx, artifact)
        _exec(ctx, _argv(ctx, ctx.spec.restore))
        return f"{ctx.spec.restore[0]} restored from {artifact.path}"


def _argv(ctx: HookContext, template: Sequence[str]) -> list[str]:
    if "{table}" in template and ctx.table is None:
        raise HookFailed(f"{ctx.statement} names no single table to give {{table}}")
    values = {"{table}": ctx.table or "", "{artifact}": str(ctx.artifact)}
    argv = [values.get(item, item) for item in template]
    program = Path(argv[0])
    if len(program.parts) > 1 and not program.is_absolute():
        argv[0] = str(Path(ctx.base_dir, program))  # a relative path means the config file's folder
    return argv


def _exec(ctx: HookContext, argv: list[str]) -> None:
    try:
        done = subprocess.run(argv, cwd=ctx.base_dir, stdin=subprocess.DEVNULL, capture_output=True,
                              timeout=ctx.spec.timeout_s, umask=0o077, check=False, env=dict(os.environ))
    except subprocess.TimeoutExpired:
        raise HookFailed(f"{argv[0]} ran past timeout_s ({ctx.spec.timeout_s}s) and was stopped") from None
    except OSError as exc:
        raise HookFailed(f"cannot run {argv[0]}: {exc.strerror or exc}", "check the program in `run` exists "
                         "and is executable") from None
    if done.returncode != 0:
        tail = done.stderr.decode("utf-8", "replace").strip()[-_TAIL:]
        raise HookFailed(f"{argv[0]} exited with status {done.returncode}" + (f": {tail}" if tail else ""))
