"""Mail targets: every send is validated, then held in the outbox for hold_s, then sent once.

`SmtpAdapter` and `SesAdapter` differ only in how one message leaves (`_deliver`); validation,
the outbox, cancellation, duplicate detection and the background sender are shared here.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from safe_mcp.adapter import Adapter, AdapterSettings, Budget, Call, Classification, Outcome, Preview, Reconciled
from safe_mcp.effects import Effect
from safe_mcp.errors import AdapterError, Drifted, SafeMcpError, TargetUnavailable
from safe_mcp_email.message import Draft, build, digest, fingerprint, validate
from safe_mcp_email.outbox import Outbox, Row
from safe_mcp_email.settings import MailSettings, SesSettings, SmtpSettings
from safe_mcp_email.transport import Delivered, DeliveryFailed, SesSender, send_smtp

__all__ = ["MailAdapter", "SesAdapter", "SmtpAdapter"]

log = logging.getLogger("safe_mcp.email")
_MAX_BACKOFF_S = 3600.0


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


class MailAdapter(Adapter):
    """The shared part of the smtp and ses kinds. Subclasses implement `_deliver` (and may `_precheck`)."""

    tools = frozenset({"email_send", "email_outbox"})
    background: ClassVar[bool] = True
    # The outbox row that queues a message carries the intent id, written in the same transaction.
    journals: ClassVar[bool] = True

    def __init__(self, name: str, settings: AdapterSettings, secrets: Mapping[str, str], *,
                 base_dir: str, state_dir: str) -> None:
        super().__init__(name, settings, secrets, base_dir=base_dir, state_dir=state_dir)
        assert isinstance(settings, MailSettings)
        self.ms = settings
        self._outbox: Outbox | None = None
        self._lock = threading.Lock()
        self._sender_done = threading.Event()
        self._sender_done.set()

    # -------------------------------------------------------------- helpers

    @property
    def outbox(self) -> Outbox:
        with self._lock:
            if self._outbox is None:
                self._outbox = Outbox(Path(self.state_dir, f"outbox-{self.name}.db"))
            return self._outbox

    def _scrub(self, text: str) -> str:
        for secret in sorted(self.secrets.values(), key=len, reverse=True):
            if secret and len(secret) >= 4:
                text = text.replace(secret, "[redacted]")
        return text

    def _draft(self, call: Call) -> Draft:
        s = self.ms
        return validate(call.args, sender=s.from_, allow=s.allow_recipients, max_recipients=s.max_recipients,
                        max_body_bytes=s.max_body_bytes)

    def _effect(self) -> Effect:
        return Effect.WRITE if self._cancellable() else Effect.IRREVERSIBLE

    def _cancellable(self) -> bool:
        """A queued message can be cancelled (undo) only while it is held; with hold_s = 0 it never is."""
        return self.ms.hold_s > 0

    def _precheck(self) -> None:
        """Checks before queueing (the SES account guard). Raises AdapterError."""

    def _deliver(self, row: Row, raw: bytes) -> Delivered:
        """Send one message. Raises DeliveryFailed."""
        raise NotImplementedError

    def _lease_s(self) -> float:
        return 180.0

    # -------------------------------------------------------------- contract

    def classify(self, call: Call) -> Classification:
        if call.tool == "email_outbox":
            return Classification(effect=Effect.READ, reason="reads the outbox", summary="outbox")
        if call.tool != "email_send":
            raise AdapterError(f"{call.tool} does not apply to a mail target")
        draft = self._draft(call)
        n = len(draft.recipients)
        if self.ms.hold_s > 0:
            reason = f"an email to {n} recipient(s), held {self.ms.hold_s:g}s in the outbox and cancellable until then"
        else:
            reason = f"an email to {n} recipient(s) that leaves at once (hold_s = 0): it cannot be unsent"
        return Classification(effect=self._effect(), reason=reason, summary=f"email {draft.subject!r}",
                              detail={"recipients": n}, compensable=self._cancellable())

    def preview(self, call: Call, classification: Classification, budget: Budget) -> Preview:
        if call.tool == "email_outbox":
            return Preview(effect=Effect.READ, affected=0, notes=["reads change nothing"])
        draft = self._draft(call)
        notes = [f"held {self.ms.hold_s:g}s after it is queued; cancel with undo until then"
                 if self.ms.hold_s > 0 else "leaves as soon as it is queued; it cannot be unsent"]
        return self._preview(draft, notes)

    def _preview(self, draft: Draft, notes: list[str]) -> Preview:
        return Preview(effect=self._effect(), affected=len(draft.recipients),
                       sample=[{**draft.summary(), "body": draft.body[:500]}], notes=notes,
                       fingerprint=fingerprint(draft))

    def execute(self, call: Call, classification: Classification, budget: Budget) -> Outcome:
        if call.tool == "email_outbox":
            return self._list()
        draft = self._draft(call)
        expect = budget.expect.fingerprint if budget.expect is not None else None
        if expect is not None and expect != fingerprint(draft):
            # The settings changed since the confirmation (the sender, say): what would leave is not what
            # was confirmed. Nothing is queued; the gate asks again with the message as it now stands.
            raise Drifted(self._effect(), "the message differs from the one that was confirmed",
                          self._preview(draft, ["the message changed since it was confirmed; confirm this one"]))
        self._precheck()
        raw, message_id = build(draft)
        hold = self.ms.hold_s
        key = call.args.get("idempotency_key")
        # A retry without an idempotency key that repeats a message still in its hold window is
        # most likely the agent retrying, not a second email meant on purpose.
        window = None if key or hold <= 0 else hold
        queued = self.outbox.enqueue(
            summary=draft.summary(), digest=digest(draft), envelope_from=draft.sender.address,
            envelope_to=draft.recipients, raw=raw, message_id=message_id, hold_s=hold,
            per_hour=self.ms.messages_per_hour, duplicate_window_s=window, intent_id=budget.intent_id,
            idem_key=f"{key}" if key else None)
        if queued.duplicate_of is not None:
            return self._duplicate(queued.duplicate_of, by_key=bool(key))
        return _queued(queued.row)

    def _duplicate(self, first: Row, *, by_key: bool) -> Outcome:
        why = ("the same idempotency_key already queued it" if by_key else
               f"an identical message to the same recipients was queued {time.time() - first.created:.0f}s ago")
        # Nothing was queued, so the undo of this call is empty: it must never cancel the first
        # message, which its own receipt can undo.
        comp = {"outbox_id": None, "duplicate_of": first.id, "affected": 0} if self._cancellable() else None
        return Outcome(
            affected=0, compensation=comp,
            result={"likely_duplicate": True, "duplicate_of": first.id, "queued": False, **first.view()},
            summary=(f"likely duplicate: {why} ({first.id}, {first.state}); nothing was queued again. To send it "
                     "twice on purpose, call again with a new idempotency_key"),
        )

    def compensate(self, compensation: Mapping[str, Any], budget: Budget) -> Outcome:
        if compensation.get("outbox_id") is None:
            first = compensation.get("duplicate_of")
            return Outcome(affected=0, result={"outbox_id": None, "duplicate_of": first},
                           summary=f"nothing to cancel: this call queued nothing (a duplicate of {first}); "
                                   f"undo the receipt that queued {first} to cancel that message")
        mid = str(compensation["outbox_id"])
        done, row = self.outbox.cancel(mid, budget.intent_id)
        if row is None:
            raise AdapterError(f"no message {mid!r} in the outbox of {self.name!r}; it cannot be cancelled here")
        if done:
            return _cancelled(row)
        raise AdapterError(_not_cancellable(row))

    def reconcile(self, intent_id: str, call: Call) -> Reconciled:
        """From the outbox journal: `executed` when this intent queued (or cancelled) a message, with the
        outcome `execute` (or `compensate`) returned; `not_executed` when no row names it.

        Raises:
            TargetUnavailable: the outbox could not be read.
        """
        found = self.outbox.by_intent(intent_id)
        if found is None:
            return Reconciled(state="not_executed", detail=f"no message in the outbox of {self.name!r} was queued "
                                                           f"or cancelled by {intent_id}")
        how, row = found
        outcome = _queued(row) if how == "queued" else _cancelled(row)
        return Reconciled(state="executed", outcome=outcome,
                          detail=f"{intent_id} {how} {row.id}, which is now {row.state}")

    def _list(self) -> Outcome:
        rows = self.outbox.latest(50)
        counts = self.outbox.counts()
        return Outcome(
            result={"messages": [r.view() for r in rows], "counts": counts, "hold_s": self.ms.hold_s,
                    "messages_per_hour": self.ms.messages_per_hour, "queued_last_hour": self.outbox.queued_last_hour(),
                    "allow_recipients": self.ms.allow_recipients},
            summary=f"{len(rows)} message(s): " + (", ".join(f"{v} {k}" for k, v in sorted(counts.items())) or "none"),
        )

    # -------------------------------------------------------------- background sender

    def run_background(self, stop: threading.Event) -> None:
        """Deliver due messages until `stop` is set. Each message is claimed before it is sent, so it
        leaves at most once; one whose sender died mid-send is marked unknown, never re-sent."""
        self._sender_done.clear()
        try:
            while not stop.is_set():
                try:
                    self._settle_orphans()
                    while not stop.is_set() and self._send_one():
                        pass
                except Exception as exc:  # the sender must outlive one bad round; it tries again next poll
                    if stop.is_set():
                        break
                    log.error("mail target %s: sender round failed: %s", self.name, self._scrub(f"{type(exc).__name__}: {exc}"))
                stop.wait(self.ms.poll_s)
        finally:
            self._sender_done.set()

    def _settle_orphans(self) -> None:
        for row in self.outbox.orphans(self._lease_s()):
            why = ("the process sending it stopped before the server's reply was recorded; it may or may not have "
                   "left, so it is not re-sent automatically (check the server's log; re-send on purpose if needed)")
            if self.outbox.settle_orphan(row.id, why):
                self._record(row, "delivery_unknown", Effect.IRREVERSIBLE, why)

    def _send_one(self) -> bool:
        claimed = self.outbox.claim_due()
        if claimed is None:
            return False
        row, raw = claimed
        try:
            delivered = self._deliver(row, raw)
        except DeliveryFailed as exc:
            text = self._scrub(exc.text)
            if exc.kind == "retry" and row.attempts < self.ms.max_attempts:
                delay = min(self.ms.retry_base_s * 2 ** (row.attempts - 1), _MAX_BACKOFF_S)
                at = time.time() + delay
                self.outbox.retry_later(row.id, text, at)
                self._record(row, "delivery_retry", Effect.WRITE,
                             f"attempt {row.attempts} failed: {text}; still queued, next attempt at {_iso(at)}")
            elif exc.kind == "unknown":
                self.outbox.mark_unknown(row.id, text)
                self._record(row, "delivery_unknown", Effect.IRREVERSIBLE, f"{text}; not re-sent automatically")
            else:
                tail = "" if exc.kind == "permanent" else f" (gave up after {row.attempts} attempts)"
                self.outbox.mark_failed(row.id, text + tail)
                self._record(row, "delivery_failed", Effect.WRITE, f"not sent: {text}{tail}")
            return True
        except Exception as exc:
            # A bug or an unexpected driver error mid-send: we cannot know whether it left.
            text = self._scrub(f"unexpected {type(exc).__name__} while sending: {exc}")
            self.outbox.mark_unknown(row.id, text)
            self._record(row, "delivery_unknown", Effect.IRREVERSIBLE, f"{text}; not re-sent automatically")
            return True
        reply = self._scrub(delivered.reply)
        self.outbox.mark_sent(row.id, reply, delivered.provider_id)
        self._record(row, "delivered", Effect.IRREVERSIBLE, f"sent: {reply}", reply=reply,
                     provider_message_id=delivered.provider_id)
        return True

    def _record(self, row: Row, outcome: str, effect: Effect, reason: str, **extra: Any) -> None:
        if self.ledger is None:
            return
        args = {"outbox_id": row.id, "message_id": row.message_id, "attempt": row.attempts,
                "subject": row.summary.get("subject"), **{k: v for k, v in extra.items() if v is not None}}
        try:
            self.ledger(tool="email_send", effect=effect, outcome=outcome, reason=reason, args=args,
                        affected=len(row.envelope_to) if outcome == "delivered" else 0, about=("outbox_id", row.id))
        except SafeMcpError as exc:
            log.error("mail target %s: could not write the receipt for %s: %s", self.name, row.id, exc)

    def close(self) -> None:
        # Let a send in progress record its result before the outbox closes (bounded: a stuck
        # send is left in `sending` and reported as unknown by the next sender).
        self._sender_done.wait(5)
        with self._lock:
            if self._outbox is not None:
                self._outbox.close()
                self._outbox = None


def _queued(row: Row) -> Outcome:
    """What queueing `row` did, with its compensation (cancel while held) when it was held at all."""
    n = len(row.envelope_to)
    hold = row.held_s
    return Outcome(
        affected=n,
        compensation={"outbox_id": row.id, "affected": n} if hold > 0 else None,
        result={"likely_duplicate": False, "queued": True, "outbox_id": row.id, "hold_s": round(hold, 3), **row.view()},
        summary=(f"queued {row.id} to {n} recipient(s); it leaves at {_iso(row.due)} unless cancelled with undo"
                 if hold > 0 else f"queued {row.id} to {n} recipient(s); it leaves now and cannot be unsent"),
    )


def _cancelled(row: Row) -> Outcome:
    return Outcome(affected=len(row.envelope_to), result={"outbox_id": row.id, "state": "cancelled"},
                   summary=f"message {row.id} was cancelled before it left; nothing was sent")


def _not_cancellable(row: Row) -> str:
    """Why a message that is not held any more cannot be cancelled, from its state."""
    mid, when = row.id, f" at {_iso(row.finished)}" if row.finished else ""
    if row.state == "sent":
        reply = f" (the server replied {row.reply})" if row.reply else ""
        return (f"message {mid} was already sent{when}{reply}: it already left, and an email cannot be unsent, "
                "so this send is irreversible")
    if row.state == "sending":
        return (f"message {mid} is being sent right now: it already left the outbox, and an email cannot be unsent, "
                "so this send is irreversible")
    if row.state == "unknown":
        return (f"message {mid} already left the outbox{when} and may have been sent ({row.last_error}); an email "
                "cannot be unsent, so this send is irreversible; check the server's log")
    if row.state == "failed":
        return f"message {mid} failed for good and was never sent ({row.last_error}); nothing to cancel"
    return f"message {mid} is already {row.state}; nothing to cancel"


class SmtpAdapter(MailAdapter):
    kind = "smtp"
    settings_model = SmtpSettings
    secret_keys = frozenset({"password"})

    def __init__(self, name: str, settings: AdapterSettings, secrets: Mapping[str, str], *,
                 base_dir: str, state_dir: str) -> None:
        super().__init__(name, settings, secrets, base_dir=base_dir, state_dir=state_dir)
        assert isinstance(settings, SmtpSettings)
        self.s = settings

    def _deliver(self, row: Row, raw: bytes) -> Delivered:
        return send_smtp(self.s, self.secrets.get("password"), row.envelope_from, row.envelope_to, raw)

    def _lease_s(self) -> float:
        return self.s.timeout_s * 4 + 60

    @classmethod
    def describe(cls, settings: AdapterSettings) -> dict[str, str]:
        assert isinstance(settings, SmtpSettings)
        return {"reaches": f"SMTP {settings.host}:{settings.port} (tls {settings.tls}) as {settings.from_}",
                **_describe_mail(settings)}


class SesAdapter(MailAdapter):
    kind = "ses"
    settings_model = SesSettings
    secret_keys = frozenset({"access_key_id", "secret_access_key"})

    def __init__(self, name: str, settings: AdapterSettings, secrets: Mapping[str, str], *,
                 base_dir: str, state_dir: str) -> None:
        super().__init__(name, settings, secrets, base_dir=base_dir, state_dir=state_dir)
        assert isinstance(settings, SesSettings)
        self.s = settings
        self._ses = SesSender(settings, secrets)

    def _precheck(self) -> None:
        try:
            self._ses.check_account()
        except DeliveryFailed as exc:
            if exc.kind == "retry":
                raise TargetUnavailable(self._scrub(exc.text), "check that STS/SES can be reached, then retry; "
                                                               "nothing was queued") from None
            raise AdapterError(self._scrub(exc.text)) from None

    def _deliver(self, row: Row, raw: bytes) -> Delivered:
        return self._ses.send(row.envelope_from, row.envelope_to, raw)

    @classmethod
    def describe(cls, settings: AdapterSettings) -> dict[str, str]:
        assert isinstance(settings, SesSettings)
        where = f" via {settings.endpoint_url}" if settings.endpoint_url else ""
        return {"reaches": f"SES {settings.region}, account {settings.account}{where}, as {settings.from_}",
                **_describe_mail(settings)}


def _describe_mail(s: MailSettings) -> dict[str, str]:
    comp = (f"cancel with undo while held ({s.hold_s:g}s); irreversible once sent" if s.hold_s > 0
            else "none: hold_s = 0, a send is irreversible")
    return {"compensation": comp, "allow_recipients": ", ".join(s.allow_recipients), "hold_s": f"{s.hold_s:g}s",
            "messages_per_hour": str(s.messages_per_hour), "max_recipients": str(s.max_recipients)}
