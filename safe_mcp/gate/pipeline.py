"""The gate: the one path from a tool call to a target.

Read it top to bottom in `Gate.run`: classify, decide, idempotency, limits, preview or
pending, intent receipt, execute, outcome receipt with compensation. `confirm` and
`undo` re-enter the same steps. Nothing else in safe-mcp holds an adapter.
"""

from __future__ import annotations

import contextvars
import functools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from safe_mcp.adapter import Adapter, Budget, Call, Classification, Outcome, Preview, Reconciled
from safe_mcp.effects import Effect
from safe_mcp.errors import AdapterError, ConfigError, Escalated, Refused, StateError, TargetUnavailable, TooManyRows
from safe_mcp.gate.calls import Caller, action_digest
from safe_mcp.gate.hooks_run import HookRun, run_hooks, undo_with_hooks
from safe_mcp.gate.policy import Decision, Verdict, decide
from safe_mcp.hooks import HookFailed
from safe_mcp.state.instance import instance_id, is_dead, is_running_here
from safe_mcp.state.receipts import Receipt, new_id
from safe_mcp.state.store import Count, Intent, PendingAction, StateStore, Usage, UsageQuery
from safe_mcp.trust.config import Config, ConfirmMode, Target
from safe_mcp.trust.orgpolicy import org_forbid
from safe_mcp.trust.secrets import Scrubber

if TYPE_CHECKING:
    from safe_mcp.gate.approvals import ApprovalDesk

__all__ = ["Caller", "Gate", "GateResult", "PendingView", "enforce_effect_table", "inside_gate"]

_IN_GATE: contextvars.ContextVar[bool] = contextvars.ContextVar("safe_mcp_in_gate", default=False)
# Arguments that steer the gate itself and are not part of what the call does.
_CONTROL_ARGS = frozenset({"dry_run", "idempotency_key"})


def inside_gate() -> bool:
    """True while the gate is calling an adapter (tests use it to prove there is no other path)."""
    return _IN_GATE.get()


class PendingView(BaseModel):
    """What the agent sees of a pending action."""

    model_config = ConfigDict(frozen=True)

    action_id: str
    target: str
    tool: str
    effect: str
    statement: dict[str, Any]
    preview: dict[str, Any]
    confirm_by: str
    how_to_confirm: str
    not_before: str
    expires: str


class GateResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    status: Literal["ok", "pending", "dry_run", "duplicate"]
    receipt_id: str
    target: str
    tool: str
    effect: str
    message: str
    result: dict[str, Any] = Field(default_factory=dict)
    affected: int | None = None
    undo: str | None = None
    pending: PendingView | None = None
    preview: dict[str, Any] | None = None


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


class Gate:
    """Owns the adapters and the state store; every tool call goes through `run`, `confirm` or `undo`."""

    def __init__(
        self,
        config: Config,
        store: StateStore,
        scrubber: Scrubber,
        secrets: dict[str, dict[str, str]] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.store = store
        self.scrub = scrubber
        self.policy_digest = config.policy_digest()
        self._secrets = secrets or {}
        self._adapters: dict[str, Adapter] = {}
        self._adapters_lock = threading.Lock()
        self._clock = clock
        self._stop = threading.Event()
        # Pending actions whose call carries secrets: the call as sent, by action id, with its expiry. Never
        # written anywhere; the state holds the call as receipts record it (PendingAction.sealed).
        self._sealed: dict[str, tuple[float, dict[str, Any]]] = {}
        self._sealed_lock = threading.Lock()

    # ---------------------------------------------------------------- the pipeline

    def run(self, call: Call, caller: Caller) -> GateResult:
        """Take one call through the whole pipeline.

        Raises:
            Refused: the call was not run; the text says why and what would allow it.
        """
        started = time.perf_counter()
        target = self._target(call, caller)
        adapter = self._adapter_or_refuse(target, call, caller)
        if call.tool not in adapter.tools:
            served = ", ".join(sorted(adapter.tools))
            self._refuse(call, caller, Effect.FORBIDDEN,
                         f"target {target.name!r} is a {target.kind} target; {call.tool} does not apply to it",
                         f"use one of: {served}")
        classification = self._classify(adapter, call, caller)
        effect = classification.effect
        if call.tool in _READ_TOOLS and effect is not Effect.READ:
            self._refuse(call, caller, effect,
                         f"{call.tool} runs reads only and this is a {effect.value} ({classification.reason})",
                         "use sql_execute for changes" if call.tool.startswith("sql_") else "use the matching write tool")
        decision = decide(effect, target, self.config.confirm, classification.reason)
        if decision.verdict is Verdict.REFUSE:
            self._refuse(call, caller, effect, decision.reason, decision.remedy)

        # A write that runs now is admitted in its intent's transaction (`_execute`); one that is only
        # previewed (dry run, or waiting for confirmation) is looked at here, in one read.
        previewed = bool(call.args.get("dry_run")) or decision.verdict is Verdict.CONFIRM
        key = call.args.get("idempotency_key")
        if key and effect is not Effect.READ and previewed:
            earlier = self._idempotent_replay(call, caller, effect, key)
            if earlier is not None:
                return earlier

        budget = self._budget(target, effect)
        if effect is not Effect.READ and previewed:
            query, judge = self._admission(call, caller, target, effect, budgets=False, session_writes=True)
            try:
                judge(self.store.admit(query))
            except _NotAdmitted as no:
                self._refuse(call, caller, effect, no.reason, no.remedy)

        if call.args.get("dry_run"):
            preview = self._preview(adapter, call, caller, classification, budget)
            measured = decide(preview.effect, target, self.config.confirm, classification.reason)
            would = ("run" if measured.verdict is Verdict.ALLOW
                     else f"wait for {measured.confirm_by.value} confirmation" if measured.confirm_by
                     else f"be refused: {measured.reason}")
            receipt = self._append(call, caller, preview.effect, "preview", decision.reason, "dry_run",
                                   affected=preview.affected)
            return GateResult(
                status="dry_run", receipt_id=receipt.id, target=call.target, tool=call.tool,
                effect=preview.effect.value, affected=preview.affected, result={"would": would},
                message=f"dry run: nothing was changed; {self._would_do(preview)}; sent for real it would {would}",
                preview=self.scrub(preview.model_dump(mode="json")),
            )
        if decision.verdict is Verdict.CONFIRM:
            preview = self._preview(adapter, call, caller, classification, budget)
            return self._make_pending(call, caller, preview, decision)
        return self._execute(adapter, target, call, caller, classification, decision, started)

    def assess(self, call: Call, caller: Caller) -> Decision:
        """Classify and decide `call` without previewing or running anything (for `gameday`).

        Raises:
            Refused: the call would be refused before anything ran.
        """
        target = self._target(call, caller)
        adapter = self._adapter_or_refuse(target, call, caller)
        classification = self._classify(adapter, call, caller)
        decision = decide(classification.effect, target, self.config.confirm, classification.reason)
        if decision.verdict is Verdict.REFUSE:
            self._refuse(call, caller, classification.effect, decision.reason, decision.remedy)
        return decision

    def confirm(self, action_id: str, caller: Caller) -> GateResult:
        """Execute a pending action confirmed by the agent, exactly once.

        Raises:
            Refused: unknown, used, expired, too early, needs a human, or changed since the preview.
        """
        started = time.perf_counter()
        action = self.store.pending(action_id)
        call = Call(target=action.target, tool=action.tool, args=action.call) if action else Call(
            target="", tool="confirm", args={"action_id": action_id})
        if action is None:
            self._refuse(call, caller, Effect.FORBIDDEN, f"no pending action has id {action_id!r}",
                         "repeat the original call to get a new action_id", tool="confirm")
            raise AssertionError("unreachable")
        if action.state != "pending":
            self._refuse(call, caller, Effect(action.effect),
                         f"action {action_id} is {action.state}; a confirmation is single use",
                         "repeat the original call to get a new action_id", tool="confirm", action_id=action_id)
        now = self._clock()
        if now > action.expires:
            if self.store.transition_pending(action_id, "pending", "expired"):
                self._append(call, caller, Effect(action.effect), "refuse", "confirmation expired", "expired",
                             tool="confirm", action_id=action_id)
            self._refuse(call, caller, Effect(action.effect),
                         f"action {action_id} expired at {_iso(action.expires)}",
                         "repeat the original call to get a new preview and action_id", tool="confirm", action_id=action_id)
        human = action.confirm_by == ConfirmMode.HUMAN.value
        approval = self.approvals.status(action) if human else None
        if approval is not None and not approval.approved:
            self._refuse(call, caller, Effect(action.effect),
                         f"action {action_id} waits for approval by a human; an agent cannot confirm it",
                         "tell the user it is waiting for their approval", tool="confirm", action_id=action_id)
        if now < action.not_before:
            wait = action.not_before - now
            self._refuse(call, caller, Effect(action.effect),
                         f"too early: confirmations are accepted {wait:.1f}s from now (min_delay_s), after the preview is read",
                         f"check the preview, then call confirm again in {wait:.1f}s", tool="confirm", action_id=action_id)
        if action_digest(call, self.policy_digest) != action.digest:
            self.store.transition_pending(action_id, "pending", "invalid")
            self._refuse(call, caller, Effect(action.effect),
                         "the call or the policy changed since this action was previewed; the confirmation no longer applies",
                         "repeat the original call to get a new preview and action_id", tool="confirm", action_id=action_id)
        if action.sealed:
            call = self._unsealed(action, call, caller)
        if not self.store.transition_pending(action_id, "pending", "executing"):
            self._refuse(call, caller, Effect(action.effect),
                         f"action {action_id} was confirmed by another call at the same moment; it runs once",
                         "look up its receipt with the receipts tool", tool="confirm", action_id=action_id)
        self._forget_sealed(action_id)  # single use: what runs now is in `call`
        if action.run_id and not caller.run_id:
            caller = caller.model_copy(update={"run_id": action.run_id})
        try:
            target = self._target(call, caller)
            adapter = self._adapter_or_refuse(target, call, caller)
            classification = self._classify(adapter, call, caller)
            allowed = Effect(action.effect)
            if classification.effect.rank > allowed.rank:
                self._refuse(call, caller, classification.effect,
                             f"the call now classifies as {classification.effect.value}, "
                             f"stronger than the confirmed {allowed.value}",
                             "repeat the original call for a new preview", tool="confirm", action_id=action_id)
            decision = decide(allowed, target, self.config.confirm, classification.reason)
            if decision.verdict is Verdict.REFUSE:
                self._refuse(call, caller, allowed, decision.reason, decision.remedy, tool="confirm", action_id=action_id)
            confirmed = classification.model_copy(update={"effect": allowed})
            by = (f"approved by {', '.join(approval.approved_by)}; executed at the request of {caller.client}"
                  if approval is not None else f"confirmed by {caller.client} (agent)")
            self._append(call, caller, allowed, "confirmed", by, "confirmed", action_id=action_id, tool=call.tool)
            result = self._execute(adapter, target, call, caller, confirmed, decision, started, action_id=action_id,
                                   expect=Preview.model_validate(action.preview))
        except BaseException:
            self.store.transition_pending(action_id, "executing", "failed")
            raise
        # A pending result means the target drifted from the preview: nothing ran, a new action replaces this one.
        self.store.transition_pending(action_id, "executing", "superseded" if result.status == "pending" else "done")
        return result

    def undo(self, receipt_id: str, caller: Caller) -> GateResult:
        """Run the compensation recorded for `receipt_id`, once, as a receipted write.

        Raises:
            Refused: nothing to undo, already undone, or the target's state moved on.
        """
        started = time.perf_counter()
        call = Call(target="", tool="undo", args={"receipt_id": receipt_id})
        comp = self.store.compensation_for(receipt_id)
        if comp is None:
            original = self.store.receipt(receipt_id)
            if original is None:
                self._refuse(call, caller, Effect.WRITE, f"no receipt has id {receipt_id!r}",
                             "list receipts with the receipts tool")
            assert original is not None
            why = ("it changed nothing" if original.effect == "read" or original.outcome != "executed"
                   else "no compensation exists for it (irreversible)")
            self._refuse(call.model_copy(update={"target": original.target}), caller, Effect.WRITE,
                         f"receipt {receipt_id} ({original.tool}, {original.outcome}) cannot be undone: {why}")
            raise AssertionError("unreachable")
        cid, target_name, data, state, undone_by = comp
        call = Call(target=target_name, tool="undo", args={"receipt_id": receipt_id})
        if state != "available":
            self._refuse(call, caller, Effect.WRITE,
                         f"receipt {receipt_id} was already undone" + (f" (receipt {undone_by})" if undone_by else ""),
                         "nothing to do: undo runs once", refers_to=receipt_id)
        target = self._target(call, caller)
        adapter = self._adapter_or_refuse(target, call, caller)
        decision = decide(Effect.WRITE, target, self.config.confirm.model_copy(update={"write": ConfirmMode.NONE}),
                          "undo restores recorded state")
        if decision.verdict is Verdict.REFUSE:
            self._refuse(call, caller, Effect.WRITE, decision.reason, decision.remedy, refers_to=receipt_id)
        if not self.store.transition_compensation(cid, "available", "undoing"):
            self._refuse(call, caller, Effect.WRITE, f"receipt {receipt_id} is being undone by another call",
                         "look it up with the receipts tool", refers_to=receipt_id)
        recorded = int(data.get("affected", 0) or 0)
        budget = Budget(rows_returned=target.limits.rows_returned,
                        rows_affected=max(target.limits.rows_affected, recorded), allowed_effect=Effect.WRITE)
        try:
            intent = self._intent(call, caller, Effect.WRITE, undoes=receipt_id, compensation_id=cid)
        except Refused:
            self.store.transition_compensation(cid, "undoing", "available")
            raise
        budget = budget.model_copy(update={"intent_id": intent.id})
        try:
            with _gate_scope():
                outcome = undo_with_hooks(self.config, target, adapter, data, budget)
        except AdapterError as exc:
            self.store.transition_compensation(cid, "undoing", "available")
            self._fail(call, caller, Effect.WRITE, exc, started, refers_to=receipt_id, settles=intent.id,
                       remedy=exc.remedy or "nothing was changed by this undo; the message says what differs from "
                                            "what the write left (the target may have moved on since)")
            raise AssertionError("unreachable") from None
        receipt = self._append(call, caller, Effect.WRITE, "allow", f"undo of {receipt_id}", "undone",
                               affected=outcome.affected, refers_to=receipt_id,
                               duration_ms=_ms(started), settles=intent.id)
        self.store.transition_compensation(cid, "undoing", "undone", undone_by=receipt.id)
        return GateResult(
            status="ok", receipt_id=receipt.id, target=target_name, tool="undo", effect=Effect.WRITE.value,
            affected=outcome.affected, result=self.scrub(outcome.result),
            message=f"undone: {outcome.summary or 'the recorded state was restored'}",
        )

    # ---------------------------------------------------------------- steps

    def _execute(
        self, adapter: Adapter, target: Target, call: Call, caller: Caller, classification: Classification,
        decision: Decision, started: float, action_id: str | None = None, expect: Preview | None = None,
    ) -> GateResult:
        effect = classification.effect
        key = call.args.get("idempotency_key") if effect is not Effect.READ else None
        if key:
            replay = self._claim(call, caller, effect, key)
            if replay is not None:
                return replay
        budget = self._budget(target, effect)
        intent: Receipt | None = None
        if effect is Effect.READ:
            self._check_ledger(call, caller)
        try:
            if effect is not Effect.READ:
                self._check_shipped(call, caller, effect)
                # The breaker and the budgets are judged under the chain lock, in the intent's transaction.
                # The session's write count only for a call not previewed: a confirmed one was counted then.
                intent = self._intent(call, caller, effect, action_id=action_id, key=key,
                                      admit=self._admission(call, caller, target, effect, budgets=True,
                                                            session_writes=action_id is None))
                budget = budget.model_copy(update={"intent_id": intent.id, "expect": expect})
            settles = intent.id if intent else None
            released = (call.target, key, None) if key else None
            # What did not run takes back the count its intent made.
            uncount = self._write_counts(call, caller, effect, 0, n=-1) if intent else None
            hooked = HookRun()
            try:
                with _gate_scope():
                    if effect is not Effect.READ:
                        hooked = run_hooks(self.config, target, adapter, classification, settles)
                    outcome = adapter.execute(call, classification, budget)
            except HookFailed as exc:
                self._fail(call, caller, effect, exc, started, action_id=action_id, settles=settles,
                           settle_key=released, counts=uncount,
                           remedy=exc.remedy or "the statement was not run; fix the hook or set required = false")
            except Escalated as esc:
                return self._escalate(adapter, target, call, caller, classification, esc, started, action_id, settles,
                                      uncount)
            except TooManyRows as exc:
                self._fail(call, caller, effect, exc, started, action_id=action_id, outcome="rolled_back",
                           remedy=f"narrow the statement, or a human can raise rows_affected (now {exc.limit})",
                           settles=settles, settle_key=released, counts=uncount)
            except TargetUnavailable as exc:
                self._fail(call, caller, effect, exc, started, action_id=action_id,
                           remedy=exc.remedy or "check the target, then retry; nothing was committed",
                           settles=settles, settle_key=released, counts=uncount)
            except AdapterError as exc:
                self._fail(call, caller, effect, exc, started, action_id=action_id, settles=settles, settle_key=released,
                           counts=uncount)
        except Refused:
            if key and intent is None:
                self.store.settle_idempotency(call.target, key, None, None)
            raise
        except Exception:  # an adapter broke its contract: settle what it did, then re-raise
            if intent is not None:
                for record in self.store.open_intents(target=call.target):
                    if record.id == intent.id:
                        self.reconcile_intent(record)
            elif key:
                self.store.settle_idempotency(call.target, key, None, None)
            raise
        if effect is Effect.READ:
            try:
                rid = self.store.append_later(
                    session=caller.session, client=caller.client, run_id=caller.run_id or caller.session,
                    target=call.target, tool=call.tool, effect=effect.value,
                    args=self.scrub(self._recorded_args(call)), decision="allow", reason=decision.reason,
                    outcome="executed", policy_digest=self.policy_digest, duration_ms=_ms(started))
            except StateError as exc:
                raise Refused(f"the read ran but its receipt cannot be written ({exc}), so its result is withheld",
                              _LEDGER_REMEDY) from None
            return GateResult(status="ok", receipt_id=rid, target=call.target, tool=call.tool, effect=effect.value,
                              result=self.scrub(outcome.result), message=outcome.summary or "read")
        assert intent is not None
        reason = decision.reason
        breach = classification.compensable and outcome.compensation is None and effect in _COMPENSABLE
        if breach:
            reason = (f"contract breach: the {target.kind} adapter classified this {effect.value} as compensable "
                      f"but recorded no compensation; it cannot be undone ({decision.reason})")
            logging.getLogger("safe_mcp").error("%s on %s: %s", call.tool, call.target, reason)
        outcome, reason = hooked.attach(outcome), hooked.note(reason)
        _receipt, result = self._record_executed(call, caller, effect, outcome, reason, intent.id, action_id,
                                                key, counted=True, duration_ms=_ms(started))
        self._count_write(call, caller, target, effect, outcome.affected)
        if breach:
            self._trouble(call, caller, "failure")
        return result

    def _record_executed(self, call: Call, caller: Caller, effect: Effect, outcome: Outcome, reason: str,
                         intent_id: str, action_id: str | None, key: str | None, *, counted: bool,
                         **extra: Any) -> tuple[Receipt, GateResult]:
        """The `executed` receipt, its compensation, the idempotency result, its budget counts and the end of
        the intent: one transaction, so none of them exists without the others. `counted`: the intent
        counted the write already, so only its rows are added."""
        comp_id = new_id("comp") if outcome.compensation is not None else None
        receipt_id = new_id("rcpt")
        result = GateResult(
            status="ok", receipt_id=receipt_id, target=call.target, tool=call.tool, effect=effect.value,
            affected=outcome.affected,
            result=self.scrub(outcome.result),
            undo=(f"undo(receipt_id={receipt_id!r})" if comp_id else None),
            message=self._done_message(outcome, effect, comp_id is not None),
        )
        counts = self._write_counts(call, caller, effect, outcome.affected, n=0 if counted else 1)
        receipt = self._append(
            call, caller, effect, "allow", reason, "executed", affected=outcome.affected, id=receipt_id,
            compensation_id=comp_id, action_id=action_id,
            compensation=(comp_id, call.tool, outcome.compensation)
            if comp_id and outcome.compensation is not None else None,
            settles=intent_id, settle_key=(call.target, key, result.model_dump(mode="json")) if key else None,
            counts=counts, **extra,
        )
        return receipt, result

    def _escalate(
        self, adapter: Adapter, target: Target, call: Call, caller: Caller, classification: Classification,
        esc: Escalated, started: float, action_id: str | None, settles: str | None, uncount: list[Count] | None,
    ) -> GateResult:
        """The engine measured more than the classifier said (or, at confirm, more or other rows than the
        preview showed): nothing was committed; decide again on what it measured."""
        key = call.args.get("idempotency_key")
        self._append(call, caller, esc.effect, "escalate", esc.reason, "rolled_back", action_id=action_id,
                     duration_ms=_ms(started), settles=settles, counts=uncount,
                     settle_key=(call.target, key, None) if key else None)
        decision = decide(esc.effect, target, self.config.confirm, esc.reason)
        if decision.verdict is Verdict.REFUSE:
            self._refuse(call, caller, esc.effect, decision.reason, decision.remedy)
        if decision.verdict is Verdict.CONFIRM or action_id is not None:
            return self._make_pending(call, caller, esc.preview, decision if decision.confirm_by else Decision(
                verdict=Verdict.CONFIRM, reason=esc.reason, confirm_by=ConfirmMode.AGENT))
        stronger = classification.model_copy(update={"effect": esc.effect})
        return self._execute(adapter, target, call, caller, stronger, decision, started)

    def _make_pending(self, call: Call, caller: Caller, preview: Preview, decision: Decision) -> GateResult:
        now = self._clock()
        rules = self.config.confirm
        confirm_by = decision.confirm_by or ConfirmMode.AGENT
        action_id = new_id("act")
        receipt_id = new_id("rcpt")
        # The state keeps the call as receipts record it; when that is not the call as sent (it carries a
        # secret), the call as sent stays in this process's memory until the action is confirmed or expires.
        kept = self.scrub(self._recorded_args(call))
        sealed = kept != call.args
        stored = call.model_copy(update={"args": kept}) if sealed else call
        action = PendingAction(
            id=action_id, created=now, not_before=now + rules.min_delay_s, expires=now + rules.ttl_s,
            target=call.target, tool=call.tool, call=stored.args, effect=preview.effect.value,
            confirm_by=confirm_by.value, digest=action_digest(stored, self.policy_digest),
            preview=self.scrub(preview.model_dump(mode="json")), state="pending",
            session=caller.session, receipt_id=receipt_id, run_id=caller.run_id, sealed=sealed,
        )
        if sealed:
            with self._sealed_lock:
                for old in [k for k, (expires, _) in self._sealed.items() if expires < now]:
                    del self._sealed[old]
                self._sealed[action_id] = (action.expires, dict(call.args))
        try:
            self.store.add_pending(action)
        except StateError as exc:
            raise Refused(f"could not record the pending action: {exc}",
                          "retry; if it persists, check the state directory") from None
        self._append(call, caller, preview.effect, "confirm", decision.reason, "pending",
                     action_id=action_id, affected=preview.affected, id=receipt_id)
        if confirm_by is ConfirmMode.HUMAN:
            try:
                self.approvals.on_pending(action, caller)
            except StateError:
                # Without its requester recorded nobody could approve it safely in team mode: no action.
                self.store.transition_pending(action_id, "pending", "failed")
                raise Refused("could not record the approval request", "retry the call") from None
            how = "a human must approve this outside the agent; tell the user what is waiting and why"
        else:
            how = (f"check the preview, then call confirm(action_id={action_id!r}) between "
                   f"{_iso(action.not_before)} and {_iso(action.expires)}")
        view = PendingView(
            action_id=action_id, target=call.target, tool=call.tool, effect=preview.effect.value,
            statement={k: v for k, v in kept.items() if k not in _CONTROL_ARGS},
            preview=action.preview, confirm_by=confirm_by.value, how_to_confirm=how,
            not_before=_iso(action.not_before), expires=_iso(action.expires),
        )
        return GateResult(
            status="pending", receipt_id=receipt_id, target=call.target, tool=call.tool,
            effect=preview.effect.value, affected=preview.affected, pending=view, preview=action.preview,
            message=f"not executed: {decision.reason}. {self._would_do(preview)}. {how}",
        )

    def _claim(self, call: Call, caller: Caller, effect: Effect, key: str) -> GateResult | None:
        """Claim `key` for this call: None when claimed (run it), or the first call's result (a duplicate).

        A claim held by a process that died is settled first, from the target's journal: the retry
        then returns the first receipt (it committed) or runs (it did not), never "running now".

        Raises:
            Refused: the key is in use by a live call, for another call, or its outcome is unknown.
        """
        digest = self._call_digest(call)
        for _ in range(3):
            state, rid, stored = self.store.claim_idempotency(call.target, key, digest, instance_id())
            if state == "claimed":
                return None
            if state == "mismatch":
                self._refuse(call, caller, effect,
                             f"idempotency_key {key!r} was already used for a different call on {call.target!r}",
                             "use a new key for a new call")
            if state == "running":
                owner = rid or ""
                if not is_dead(owner):
                    self._refuse(call, caller, effect, f"a call with idempotency_key {key!r} is running now",
                                 "wait for it and look up its receipt with the receipts tool")
                self._settle_dead_claim(call.target, key, owner)
                continue
            if state == "unknown":
                self._refuse(call, caller, effect,
                             f"the call that used idempotency_key {key!r} was interrupted (intent {rid}) and "
                             f"{call.target!r} cannot say whether it ran",
                             f"check the target by hand; a human then runs `safe-mcp reconcile {rid} --executed` or "
                             f"`--not-executed`, and the retry returns its receipt or runs")
            assert stored is not None and rid is not None
            receipt = self._append(call, caller, effect, "allow", f"idempotency_key {key!r} already used by {rid}",
                                   "duplicate", refers_to=rid)
            first = GateResult.model_validate(stored)
            return first.model_copy(update={
                "status": "duplicate",
                "message": f"already done by receipt {rid} (same idempotency_key); nothing ran again. "
                           f"This call is recorded as {receipt.id}",
            })
        self._refuse(call, caller, effect, f"idempotency_key {key!r} is contended", "retry in a moment")
        raise AssertionError("unreachable")

    def _idempotent_replay(self, call: Call, caller: Caller, effect: Effect, key: str) -> GateResult | None:
        """Before previewing: the first call's result when `key` was used; None when it is free."""
        replay = self._claim(call, caller, effect, key)
        if replay is None:
            # Only looking: release so that execution claims it in its own step.
            self.store.settle_idempotency(call.target, key, None, None)
        return replay

    # ---------------------------------------------------------------- reconciliation

    def _settle_dead_claim(self, target: str, key: str, owner: str) -> None:
        intents = self.store.open_intents(target=target, key=key)
        if not intents:
            # The owner died before writing its intent, so nothing ran: the retry may run.
            self.store.release_dead_claim(target, key, owner)
        for intent in intents:
            if intent.state == "open":
                self.reconcile_intent(intent)

    def reconcile(self, *, only_dead: bool = True) -> list[tuple[Intent, str]]:
        """Settle every intent whose outcome was never recorded (its process died), from the target's own
        journal, and release idempotency keys held by dead processes that never wrote an intent.
        Returns each intent looked at with what became of it: executed, not_executed, unknown or open
        (the target could not be asked; tried again next time)."""
        done = []
        for intent in self.store.open_intents():
            if intent.state == "open" and (not only_dead or is_dead(intent.owner)):
                done.append((intent, self.reconcile_intent(intent)))
        for target, key, owner in self.store.running_claims():
            if is_dead(owner):
                self.store.release_dead_claim(target, key, owner)
        return done

    def reconcile_intent(self, intent: Intent) -> str:
        """Ask the target what became of one intent and record it (see `reconcile`)."""
        call = Call(target=intent.target, tool=intent.tool, args=intent.args)
        target = self.config.targets.get(intent.target)
        if target is None:
            verdict = Reconciled(state="unknown", detail=f"target {intent.target!r} is no longer configured")
        else:
            try:
                with _gate_scope():
                    verdict = self._adapter(target).reconcile(intent.id, call)
            except AdapterError as exc:
                logging.getLogger("safe_mcp").warning("cannot reconcile intent %s on %s yet: %s",
                                                      intent.id, intent.target, self.scrub(str(exc)))
                return "open"
        if verdict.state == "unknown":
            self._record_unknown(intent, verdict.detail)
            return "unknown"
        self._settle_intent(intent, executed=verdict.state == "executed", outcome=verdict.outcome,
                            how="the target's journal shows it committed" if verdict.state == "executed"
                            else "the target's journal has no record of it, so nothing was changed")
        return verdict.state

    def settle_by_human(self, intent_id: str, *, executed: bool, by: str) -> str:
        """A human's verdict on an intent the target could not settle (`safe-mcp reconcile`).

        Raises:
            Refused: no such open intent.
        """
        found = [i for i in self.store.open_intents() if i.id == intent_id]
        if not found:
            raise Refused(f"no unsettled intent has id {intent_id!r}", "list them with `safe-mcp reconcile`")
        intent = found[0]
        if intent.state == "open" and is_running_here(intent.owner):
            raise Refused(f"intent {intent_id} belongs to a running safe-mcp ({intent.owner})",
                          "wait for it to finish; only intents of processes that died are settled")
        return self._settle_intent(intent, executed=executed, outcome=None,
                                   how=f"settled by {by}: it {'ran' if executed else 'did not run'}").id

    def _settle_intent(self, intent: Intent, *, executed: bool, outcome: Outcome | None, how: str) -> Receipt:
        call = Call(target=intent.target, tool=intent.tool, args=intent.args)
        caller = Caller(session=intent.session, client=intent.client, run_id=intent.run_id)
        effect = Effect(intent.effect)
        key = intent.idempotency_key
        if intent.undoes and intent.compensation_id:
            receipt = self._append(call, caller, effect, "allow", f"undo of {intent.undoes}, reconciled after a crash: {how}",
                                   "undone" if executed else "not_executed", refers_to=intent.undoes,
                                   affected=outcome.affected if outcome else None, settles=intent.id)
            self.store.transition_compensation(intent.compensation_id, "undoing", "undone" if executed else "available",
                                               undone_by=receipt.id if executed else None)
            return receipt
        if executed:
            receipt, _ = self._record_executed(call, caller, effect, outcome or Outcome(),
                                               f"reconciled after a crash: {how}", intent.id, intent.action_id, key,
                                               counted=intent.counted, refers_to=intent.id)
        else:
            receipt = self._append(call, caller, effect, "allow", f"reconciled after a crash: {how}", "not_executed",
                                   action_id=intent.action_id, refers_to=intent.id, settles=intent.id,
                                   settle_key=(intent.target, key, None) if key else None,
                                   counts=self._write_counts(call, caller, effect, 0, n=-1) if intent.counted else None)
        if intent.action_id:
            self.store.transition_pending(intent.action_id, "executing", "done" if executed else "failed")
        return receipt

    def _record_unknown(self, intent: Intent, detail: str) -> None:
        if self.store.mark_intent_unknown(intent.id):
            call = Call(target=intent.target, tool=intent.tool, args=intent.args)
            caller = Caller(session=intent.session, client=intent.client, run_id=intent.run_id)
            self._append(call, caller, Effect(intent.effect), "allow",
                         f"the process died during this call and {intent.target!r} cannot say whether it ran "
                         f"({detail}); a human settles it with `safe-mcp reconcile {intent.id}`",
                         "unknown", refers_to=intent.id, action_id=intent.action_id)
        if intent.idempotency_key:
            self.store.mark_idempotency_unknown(intent.target, intent.idempotency_key, intent.id)

    # ---------------------------------------------------------------- approvals

    @functools.cached_property
    def approvals(self) -> ApprovalDesk:
        """Human approvals of `human` actions (imported on first use: TOTP and crypto cost start-up time)."""
        from safe_mcp.gate.approvals import ApprovalDesk

        return ApprovalDesk(self)

    def clock(self) -> float:
        return self._clock()

    def record(self, call: Call, caller: Caller, effect: Effect, decision: str, reason: str, outcome: str,
               **extra: Any) -> Receipt:
        """Append a receipt about `call` (for the approval desk: approvals, denials, expiries)."""
        return self._append(call, caller, effect, decision, reason, outcome, **extra)

    def refuse(self, call: Call, caller: Caller, effect: Effect, reason: str, remedy: str = "", **extra: Any) -> None:
        """Receipt a refusal about `call` and raise it.

        Raises:
            Refused: always.
        """
        self._refuse(call, caller, effect, reason, remedy, **extra)

    # ---------------------------------------------------------------- helpers

    def _target(self, call: Call, caller: Caller) -> Target:
        target = self.config.targets.get(call.target)
        if target is None:
            known = ", ".join(sorted(self.config.targets)) or "none"
            self._refuse(call, caller, Effect.FORBIDDEN, f"unknown target {call.target!r}",
                         f"use one of the configured targets: {known} (the targets tool lists them)")
            raise AssertionError("unreachable")
        return target

    def _adapter(self, target: Target) -> Adapter:
        """The target's adapter, imported and built on first use (one per target, whichever thread asks first).

        Raises:
            TargetUnavailable: the adapter cannot be imported (a broken install).
        """
        with self._adapters_lock:
            adapter = self._adapters.get(target.name)
            if adapter is None:
                try:
                    cls = target.adapter_cls
                except ConfigError as exc:
                    raise TargetUnavailable(f"target {target.name!r} cannot be used: {exc.problem}", exc.fix) from None
                adapter = cls(
                    target.name, target.settings, self._secrets.get(target.name, {}),
                    base_dir=self.config.base_dir, state_dir=str(self.config.state_dir))
                adapter.ledger = functools.partial(self._record_for_adapter, target.name)
                self._adapters[target.name] = adapter
            return adapter

    def _adapter_or_refuse(self, target: Target, call: Call, caller: Caller) -> Adapter:
        """`_adapter`, refused with a receipt when the adapter cannot be imported (it is imported on first use)."""
        try:
            target.adapter_cls  # noqa: B018 - imports it (cached) or says why not
        except ConfigError as exc:
            self._refuse(call, caller, Effect.FORBIDDEN, f"target {target.name!r} cannot be used: {exc.problem}", exc.fix)
        return self._adapter(target)

    def _record_for_adapter(self, target_name: str, *, tool: str, effect: Effect, outcome: str, reason: str,
                            args: dict[str, Any], affected: int | None = None, refers_to: str | None = None,
                            about: tuple[str, str] | None = None) -> str:
        """A receipt for what an adapter did on its own (its `ledger`): same chain, scrubbed, session "background"."""
        if refers_to is None and about is not None:
            refers_to = self.store.receipt_of_compensation(target_name, *about)
        receipt = self.store.append(
            session="background", client=f"safe-mcp/{target_name}", target=target_name, tool=tool,
            effect=effect.value, args=self.scrub(args), decision="allow", reason=self.scrub(reason), outcome=outcome,
            policy_digest=self.policy_digest, affected=affected, refers_to=refers_to,
        )
        return receipt.id

    def _classify(self, adapter: Adapter, call: Call, caller: Caller) -> Classification:
        try:
            with _gate_scope():
                classification = adapter.classify(call)
            # The org policy's [forbid] lists add to the adapter's own forbidden calls.
            if self.config.org_policy:
                classification = org_forbid(self.config, call, classification)
            return enforce_effect_table(classification)
        except TargetUnavailable as exc:
            self._refuse(call, caller, Effect.FORBIDDEN, f"target {call.target!r} is unavailable: {exc}",
                         exc.remedy or "check the target, then retry; nothing was run")
            raise AssertionError("unreachable") from None
        except AdapterError as exc:
            self._refuse(call, caller, Effect.FORBIDDEN, f"cannot classify the call: {exc}",
                         "fix the statement; unparseable calls never run")
            raise AssertionError("unreachable") from None

    def _preview(self, adapter: Adapter, call: Call, caller: Caller, cls: Classification, budget: Budget) -> Preview:
        try:
            with _gate_scope():
                return adapter.preview(call, cls, budget)
        except TargetUnavailable as exc:
            self._refuse(call, caller, cls.effect, f"target {call.target!r} is unavailable: {exc}",
                         exc.remedy or "check the target, then retry; nothing was run")
            raise AssertionError("unreachable") from None
        except AdapterError as exc:
            self._refuse(call, caller, cls.effect, f"the preview failed: {exc}", "fix the statement and call again")
            raise AssertionError("unreachable") from None

    def _budget(self, target: Target, effect: Effect) -> Budget:
        return Budget(rows_returned=target.limits.rows_returned, rows_affected=target.limits.rows_affected,
                      bytes_returned=target.limits.bytes_returned, allowed_effect=effect)

    # ---------------------------------------------------------------- budgets and breaker

    def _admission(self, call: Call, caller: Caller, target: Target, effect: Effect, *, budgets: bool,
                   session_writes: bool) -> tuple[UsageQuery, Callable[[Usage], None]]:
        """What admitting a write reads (the caller's breaker on this target, its budget windows, the
        session's write count) and the judge of that usage, which raises `_NotAdmitted` with the reason."""
        lim, now = target.limits, self._clock()
        checks = [("writes_per_minute", lim.writes_per_minute, "write", 60, False),
                  ("writes_per_hour", lim.writes_per_hour, "write", 3600, False),
                  ("rows_affected_per_hour", lim.rows_affected_per_hour, "write", 3600, True)] if budgets else []
        if budgets and effect.rank >= Effect.DESTRUCTIVE.rank:
            checks.append(("destructive_per_hour", lim.destructive_per_hour, "destructive", 3600, False))
        windows: list[tuple[str, str, str, float | None]] = [
            (caller.principal, target.name, kind, now - window_s) for _n, _l, kind, window_s, _r in checks]
        if session_writes:
            windows.append((caller.session, "*", "write", None))
        query = UsageQuery(windows=tuple(windows), breaker=(caller.principal, call.target), now=now)

        def judge(usage: Usage) -> None:
            if usage.breaker is not None:
                tripped_at, why = usage.breaker
                raise _NotAdmitted(
                    f"the circuit breaker for {caller.principal!r} on {call.target!r} tripped at {_iso(tripped_at)} "
                    f"({why}); writes stay refused in every session of this caller, also after a restart; reads still work",
                    f"stop and tell the user; a human resets it with `safe-mcp breaker reset --session "
                    f"{caller.principal} --target {call.target}`")
            if session_writes and usage.windows[-1][0] >= lim.writes_per_session:
                raise _NotAdmitted(f"this session has used its {lim.writes_per_session} writes (writes_per_session)",
                                   "start a new session, or a human can raise limits.writes_per_session")
            for (name, limit, _kind, window_s, by_rows), (count, rows, oldest) in zip(checks, usage.windows, strict=False):
                if (rows if by_rows else count) >= limit:
                    resets = (oldest or now) + window_s
                    raise _NotAdmitted(f"budget {name} ({limit}) is used up for {caller.principal!r} on {target.name!r}; "
                                       f"it resets in {max(resets - now, 0):.0f}s (at {_iso(resets)})",
                                       f"wait, or a human can raise limits.{name}")

        return query, judge

    @staticmethod
    def _write_counts(call: Call, caller: Caller, effect: Effect, rows: int, *, n: int = 1) -> list[Count]:
        """The budget counters a write bumps: per session (writes_per_session) and, over time windows, per
        principal and target (destructive ones also as destructive)."""
        counts: list[Count] = [(caller.session, "*", "write", rows, n), (caller.principal, call.target, "write", rows, n)]
        if effect.rank >= Effect.DESTRUCTIVE.rank:
            counts.append((caller.principal, call.target, "destructive", rows, n))
        return counts

    def _check_shipped(self, call: Call, caller: Caller, effect: Effect) -> None:
        """With `fail_writes_when_unshipped_s`, writes stop while receipts are stuck on this box."""
        if self.config.receipts.ship is None:
            return
        from safe_mcp.gate.ship import ship_gate_check

        reason = ship_gate_check(self.store, self.config.receipts.ship)
        if reason is not None:
            self._refuse(call, caller, effect, reason, "stop and tell the user; writes resume once receipts are "
                         "shipped (`safe-mcp check` shows why they are not)")

    def _count_write(self, call: Call, caller: Caller, target: Target, effect: Effect, affected: int) -> None:
        """A write that used most of rows_affected is trouble for the breaker (its budgets were counted
        with its receipt)."""
        if target.limits.rows_affected and affected >= 0.8 * target.limits.rows_affected:
            self._trouble(call, caller, "near_limit")

    def _trouble(self, call: Call, caller: Caller, kind: str) -> None:
        """Count a refusal, failure or near-limit write; trip the breaker when a burst passes its threshold."""
        if call.target not in self.config.targets:
            return
        rules = self.config.breaker
        threshold = {"refusal": rules.refusals, "failure": rules.failures, "near_limit": rules.near_limit}[kind]
        try:
            # Trouble is counted per principal, so a new session does not start from a clean slate.
            self.store.record_event(caller.principal, call.target, kind)
            now = self._clock()
            usage = self.store.admit(UsageQuery(windows=((caller.principal, call.target, kind, now - rules.window_s),),
                                                breaker=(caller.principal, call.target), now=now))
            count = usage.windows[0][0]
            if count < threshold or usage.breaker is not None:
                return
            reason = f"{count} {kind.replace('_', '-')}s within {rules.window_s}s"
            receipt = self._append(call.model_copy(update={"args": {}}), caller, Effect.WRITE, "refuse", reason,
                                   "breaker_tripped", tool="breaker")
            if self.store.trip_breaker(caller.principal, call.target, reason, receipt.id):
                logging.getLogger("safe_mcp").warning("circuit breaker tripped for %s on %s: %s",
                                                      caller.principal, call.target, reason)
                self._notify_breaker(caller, call.target, reason, receipt.id)
        except StateError:
            logging.getLogger("safe_mcp").exception("could not record trouble for the circuit breaker")

    def _notify_breaker(self, caller: Caller, target: str, reason: str, receipt_id: str) -> None:
        """Tell the approvals webhook, when one is configured; a failed notification changes nothing."""
        url = self.config.approvals.notify_url
        if url:
            from safe_mcp.gate import webhook
            webhook.post_in_background(url, {
                "text": f"safe-mcp: circuit breaker tripped for {caller.principal} on {target} ({reason}); "
                        f"its writes are refused until `safe-mcp breaker reset --session {caller.principal} --target {target}`",
                "breaker": {"principal": caller.principal, "session": caller.session, "client": caller.client,
                            "target": target, "reason": reason,
                            "receipt_id": receipt_id},
            }, self.config.approvals.notify_retries, f"breaker {target}")

    def _call_digest(self, call: Call) -> str:
        return action_digest(call, "")

    def _unsealed(self, action: PendingAction, call: Call, caller: Caller) -> Call:
        """The call as sent of a sealed action (see PendingAction.sealed), from this process's memory.

        Raises:
            Refused: this process did not preview it (another instance, or a restart since), or the call in
                memory is not the one the state records.
        """
        with self._sealed_lock:
            held = self._sealed.get(action.id)
        if held is None:
            self._refuse(call, caller, Effect(action.effect),
                         f"action {action.id} carries secret arguments, which safe-mcp writes nowhere: they were kept "
                         "in the memory of the safe-mcp process that previewed it, and this process is not that one "
                         "(it restarted, or another instance previewed it)",
                         "repeat the original call to get a new preview and action_id", tool="confirm",
                         action_id=action.id)
            raise AssertionError("unreachable")
        sent = call.model_copy(update={"args": held[1]})
        if self.scrub(self._recorded_args(sent)) != action.call:
            self.store.transition_pending(action.id, "pending", "invalid")
            self._refuse(call, caller, Effect(action.effect),
                         f"action {action.id} no longer matches the call it was made from",
                         "repeat the original call to get a new preview and action_id", tool="confirm",
                         action_id=action.id)
        return sent

    def _forget_sealed(self, action_id: str) -> None:
        with self._sealed_lock:
            self._sealed.pop(action_id, None)

    def _check_ledger(self, call: Call, caller: Caller) -> None:
        """A read is refused before it runs while read receipts cannot be written (group commit: their
        receipts are written ~50 ms later, and a failed flush says the ledger is down)."""
        try:
            self.store.check_ledger()
        except StateError as exc:
            self._refuse(call, caller, Effect.READ, f"reads are refused while their receipts cannot be written: {exc}",
                         _LEDGER_REMEDY)

    def _intent(self, call: Call, caller: Caller, effect: Effect, *, action_id: str | None = None,
                key: str | None = None, undoes: str | None = None, compensation_id: str | None = None,
                admit: tuple[UsageQuery, Callable[[Usage], None]] | None = None) -> Receipt:
        """The intent receipt, durable before anything runs. With `admit`, the write is judged in the same
        transaction, under the chain lock, and counted against its budgets there, so two instances
        sharing the store cannot both take the last write of a budget.

        Raises:
            Refused: not admitted, or the intent could not be written (then nothing runs).
        """
        record = Intent(owner=instance_id(), target=call.target, tool=call.tool,
                        args=_utf8_safe(self.scrub(self._recorded_args(call))), effect=effect.value, session=caller.session,
                        client=caller.client, run_id=caller.run_id, action_id=action_id, idempotency_key=key,
                        undoes=undoes, compensation_id=compensation_id, counted=admit is not None)
        try:
            return self._append(call, caller, effect, "allow", "about to execute", "intent", intent=record,
                                action_id=action_id, refers_to=undoes, admit=admit,
                                counts=self._write_counts(call, caller, effect, 0) if admit is not None else None)
        except _NotAdmitted as no:
            self._refuse(call, caller, effect, no.reason, no.remedy)
            raise AssertionError("unreachable") from None
        except StateError as exc:
            raise Refused(f"the intent receipt could not be written ({exc}); nothing was run",
                          "check the state directory is writable, then retry") from None

    def _append(self, call: Call, caller: Caller, effect: Effect, decision: str, reason: str, outcome: str,
                *, tool: str | None = None, compensation: tuple[str, str, dict[str, Any]] | None = None,
                **extra: Any) -> Receipt:
        args = self._recorded_args(call)
        return self.store.append(
            session=caller.session, client=caller.client, run_id=caller.run_id or caller.session,
            target=call.target, tool=tool or call.tool,
            effect=effect.value, args=_utf8_safe(self.scrub(args)), decision=decision,
            reason=_utf8_safe(self.scrub(reason)), outcome=outcome, policy_digest=self.policy_digest,
            compensation=compensation, **extra,
        )

    def _recorded_args(self, call: Call) -> dict[str, Any]:
        """What receipts record of the call's arguments: secrets the agent sent are left out by the adapter."""
        adapter = self._adapters.get(call.target)
        return adapter.redacted_args(call) if adapter is not None else dict(call.args)

    def _refuse(self, call: Call, caller: Caller, effect: Effect, reason: str, remedy: str = "",
                *, tool: str | None = None, **extra: Any) -> None:
        try:
            receipt = self._append(call, caller, effect, "refuse", reason, "refused", tool=tool, **extra)
            rid: str | None = receipt.id
        except StateError:
            rid = None
        self._trouble(call, caller, "refusal")
        raise Refused(self.scrub(reason), self.scrub(remedy), rid)

    def _fail(self, call: Call, caller: Caller, effect: Effect, exc: AdapterError, started: float,
              outcome: str = "failed", remedy: str = "", **extra: Any) -> None:
        message = self.scrub(str(exc))
        try:
            receipt = self._append(call, caller, effect, "allow", message, outcome, duration_ms=_ms(started), **extra)
            rid: str | None = receipt.id
        except StateError:
            rid = None
        self._trouble(call, caller, "failure")
        raise Refused(f"{outcome.replace('_', ' ')}: {message}",
                      remedy or exc.remedy or "nothing was changed; fix the call and retry", rid)

    @staticmethod
    def _would_do(preview: Preview) -> str:
        n = "an unknown number of" if preview.affected is None else str(preview.affected)
        return f"it would affect {n} rows/items ({preview.effect.value})"

    @staticmethod
    def _done_message(outcome: Outcome, effect: Effect, undoable: bool) -> str:
        if effect is Effect.READ:
            return outcome.summary or "read"
        tail = "; undo with the undo tool and this receipt_id" if undoable else "; no undo is recorded"
        return f"executed: {outcome.summary or effect.value}, {outcome.affected} affected{tail}"

    def audit(self, target_name: str) -> dict[str, Any]:
        """What the target's credentials could do beyond its access (connects; for `check` and `serve`).

        Raises:
            AdapterError: the target could not be reached.
        """
        target = self.config.targets[target_name]
        with _gate_scope():
            return self._adapter(target).audit()

    def start_background(self) -> list[threading.Thread]:
        """Start the background work of every target whose adapter has some (e.g. a mail outbox)."""
        threads = []
        for target in self.config.targets.values():
            if target.spec.background:
                adapter = self._adapter(target)

                def work(a: Adapter = adapter) -> None:
                    token = _IN_GATE.set(True)
                    try:
                        a.run_background(self._stop)
                    finally:
                        _IN_GATE.reset(token)

                t = threading.Thread(target=work, name=f"safe-mcp-{target.name}", daemon=True)
                t.start()
                threads.append(t)
        return threads

    def close(self) -> None:
        self._stop.set()
        with self._adapters_lock:
            for adapter in self._adapters.values():
                adapter.close()
            self._adapters.clear()


_READ_TOOLS = frozenset({"sql_query", "sql_schema", "email_outbox"})
_COMPENSABLE = frozenset({Effect.WRITE, Effect.DESTRUCTIVE})
_LEDGER_REMEDY = ("check the state store (disk space, permissions, or the state database); reads resume by "
                  "themselves within ~50 ms of receipts being written again, then retry")


def enforce_effect_table(classification: Classification) -> Classification:
    """`write` and `destructive` mean a compensation will be recorded; a state change that will have
    none is `irreversible`, whatever the adapter's name for it. Decided before anything runs."""
    if classification.effect in _COMPENSABLE and not classification.compensable:
        return classification.model_copy(update={
            "effect": Effect.IRREVERSIBLE,
            "reason": f"{classification.reason}; no undo would be recorded for this {classification.effect.value}, "
                      "so it counts as irreversible",
        })
    return classification


@contextmanager
def _gate_scope() -> Iterator[None]:
    token = _IN_GATE.set(True)
    try:
        yield
    finally:
        _IN_GATE.reset(token)


def _utf8_safe(value: Any) -> Any:
    """Lone surrogates (JSON "\\ud800" escapes) cannot be encoded, so a receipt holding one could not be
    written and even the refusal of a bad call would fail; they are recorded backslash-escaped instead."""
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, dict):
        return {_utf8_safe(k): _utf8_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_utf8_safe(v) for v in value]
    return value


class _NotAdmitted(Exception):
    """A write the breaker or a budget does not admit (raised by an admission judge, refused by the gate)."""

    def __init__(self, reason: str, remedy: str) -> None:
        super().__init__(reason)
        self.reason, self.remedy = reason, remedy


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)
