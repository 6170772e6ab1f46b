"""Human approval the agent cannot give itself.

Approvers are enrolled with a TOTP secret (RFC 6238) kept encrypted in the state store; the
key that decrypts the secrets is in the OS keyring or, where no keyring backend works (headless
machines, CI), in `approvers.key` (mode 0600) in the state directory. Which one was used is
recorded at the first enrolment and printed. No tool ever returns a secret.

An approval names an approver, a channel (cli, web, elicitation) and the digest of the exact
call under the policy in force; it counts only while that digest is still the action's. A
`human` action runs (through `Gate.confirm`) once `approvals_required` distinct approvers agreed
and nobody denied. Every approval, denial, refused attempt and expiry is a receipt.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from safe_mcp.adapter import Call
from safe_mcp.effects import Effect
from safe_mcp.errors import Refused, StateError
from safe_mcp.gate import webhook
from safe_mcp.gate.calls import Caller, GateServices, action_digest
from safe_mcp.state.store import PendingAction
from safe_mcp.trust.config import ConfirmMode

__all__ = ["ApprovalDesk", "ApprovalStatus", "Approvers", "DecisionResult", "requester_of"]

log = logging.getLogger("safe_mcp")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS approvers (
    name TEXT PRIMARY KEY,
    secret BLOB NOT NULL,
    created REAL NOT NULL,
    last_step INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS approvals (
    action_id TEXT NOT NULL,
    approver TEXT NOT NULL,
    channel TEXT NOT NULL,
    decision TEXT NOT NULL,
    digest TEXT NOT NULL,
    time REAL NOT NULL,
    reason TEXT NOT NULL,
    PRIMARY KEY (action_id, approver)
);
CREATE TABLE IF NOT EXISTS approval_requests (
    action_id TEXT PRIMARY KEY,
    principal TEXT
);
CREATE TABLE IF NOT EXISTS approval_meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""
APPROVAL_TABLES = _SCHEMA
"""The DDL of this module's tables in the state store (for `safe-mcp state migrate`)."""


KEY_FILE = "approvers.key"
_KEYRING_PREFIX = "approvers-key:"
Channel = Literal["cli", "web", "elicitation", "api"]


class ApprovalStatus(BaseModel):
    model_config = ConfigDict(frozen=True)

    approved_by: list[str]
    denied_by: list[str]
    required: int

    @property
    def approved(self) -> bool:
        return not self.denied_by and len(self.approved_by) >= self.required


class DecisionResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    action_id: str
    decision: Literal["approve", "deny"]
    approver: str
    channel: str
    receipt_id: str
    status: ApprovalStatus
    message: str


def _valid_name(name: str) -> bool:
    return 1 <= len(name) <= 64 and all(c.isalnum() or c in "-_.@" for c in name)


def _provider_name(name: str) -> bool:
    """An approver the team's provider proves ("oidc:SUB"): enrolled for TOTP on top, never decided by code alone."""
    sub = name[len("oidc:"):]
    return name.startswith("oidc:") and 1 <= len(sub) <= 200 and all("\x21" <= c <= "\x7e" for c in sub)


class Approvers:
    """Enrolled approvers and their TOTP secrets, encrypted at rest in the state store."""

    def __init__(self, gate: GateServices) -> None:
        self._gate = gate
        self._store = gate.store
        with self._store.transaction() as db:
            # One statement at a time: executescript would COMMIT in the middle of the transaction.
            for stmt in self._store.ddl(_SCHEMA):
                db.execute(stmt)
        self._lock = threading.Lock()

    # key ------------------------------------------------------------------------------

    def _keyring_name(self) -> str:
        return _KEYRING_PREFIX + str(Path(self._gate.config.state_dir).resolve())

    def _meta(self, key: str) -> str | None:
        rows = self._store.query("SELECT value FROM approval_meta WHERE key = ?", (key,))
        return str(rows[0][0]) if rows else None

    def _key(self, create: bool) -> tuple[bytes, str]:
        """The Fernet key and where it lives ("keyring" or the key file's path).

        Raises:
            StateError: no key exists yet (and `create` is false) or it cannot be read.
        """
        from cryptography.fernet import Fernet

        where = self._meta("key_store")
        key_path = Path(self._gate.config.state_dir) / KEY_FILE
        if where == "keyring":
            import keyring
            import keyring.errors

            try:
                value = keyring.get_password("safe-mcp", self._keyring_name())
            except keyring.errors.KeyringError as exc:
                raise StateError(f"the approvers' key is in the OS keyring, which is not usable now ({exc})") from None
            if not value:
                raise StateError("the approvers' key is missing from the OS keyring; enrol the approvers again")
            return value.encode(), "OS keyring"
        if where == "file":
            try:
                return key_path.read_bytes().strip(), str(key_path)
            except OSError as exc:
                raise StateError(f"cannot read the approvers' key file {key_path}: {exc}") from None
        if not create:
            raise StateError("no approver is enrolled; run: safe-mcp approver add NAME")
        key = Fernet.generate_key()
        import keyring
        import keyring.errors

        try:
            keyring.set_password("safe-mcp", self._keyring_name(), key.decode())
            store = "keyring"
        except keyring.errors.KeyringError:
            # Headless fallback: a key file only the owner can read, beside the state store.
            fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(key)
            store = "file"
        with self._store.transaction() as db:
            db.execute("INSERT INTO approval_meta VALUES ('key_store', ?)", (store,))
        return key, ("OS keyring" if store == "keyring" else str(key_path))

    # enrolment ------------------------------------------------------------------------

    def add(self, name: str) -> tuple[str, str, str]:
        """Enrol `name`; return (secret, otpauth URI, where the key is). Shown once, to the human enrolling.

        Raises:
            Refused: bad or taken name.
        """
        import pyotp
        from cryptography.fernet import Fernet

        if not (_valid_name(name) or _provider_name(name)):
            raise Refused(f"invalid approver name {name!r}",
                          "use letters, digits, - _ . @ (at most 64), or oidc:SUB for a provider subject")
        if self._store.query("SELECT 1 FROM approvers WHERE name = ?", (name,)):
            raise Refused(f"approver {name!r} is already enrolled", "choose another name")
        key, where = self._key(create=True)
        secret = pyotp.random_base32()
        with self._store.transaction() as db:
            db.execute("INSERT INTO approvers VALUES (?, ?, ?, 0)", (name, Fernet(key).encrypt(secret.encode()), time.time()))
        uri = pyotp.TOTP(secret).provisioning_uri(name=name, issuer_name="safe-mcp")
        return secret, uri, where

    def names(self) -> list[str]:
        return [str(r[0]) for r in self._store.query("SELECT name FROM approvers ORDER BY name")]

    def verify(self, name: str, code: str) -> bool:
        """True when `code` is `name`'s current TOTP code (±1 step) and newer than any code used before."""
        import pyotp
        from cryptography.fernet import Fernet, InvalidToken

        rows = self._store.query("SELECT secret, last_step FROM approvers WHERE name = ?", (name,))
        code = code.strip()
        if not rows or not code.isdigit() or len(code) != 6:
            return False
        key, _ = self._key(create=False)
        try:
            secret = Fernet(key).decrypt(rows[0][0]).decode()
        except InvalidToken:
            raise StateError("the approvers' key does not decrypt the stored secrets") from None
        totp = pyotp.TOTP(secret)
        now = time.time()
        with self._lock:
            for offset in (-1, 0, 1):
                at = now + offset * totp.interval
                step = int(at // totp.interval)
                if hmac.compare_digest(totp.at(at), code):
                    # A code is single use: a step at or before the last accepted one is a replay.
                    with self._store.transaction() as db:
                        cur = db.execute("UPDATE approvers SET last_step = ? WHERE name = ? AND last_step < ?",
                                         (step, name, step))
                        return cur.rowcount == 1
        return False


class ApprovalDesk:
    """Records decisions on `human` actions for one gate and tells whether an action may run."""

    def __init__(self, gate: GateServices) -> None:
        self.gate = gate
        self.store = gate.store
        self.approvers = Approvers(gate)

    def required(self, action: PendingAction) -> int:
        target = self.gate.config.targets.get(action.target)
        if target is not None and target.approvals_required:
            return target.approvals_required
        rule = self.gate.config.confirm.approvals_required
        return max(1, rule.get(action.effect, 1) if isinstance(rule, dict) else rule)

    def status(self, action: PendingAction) -> ApprovalStatus:
        rows = self.store.query("SELECT approver, decision FROM approvals WHERE action_id = ? AND digest = ? ORDER BY time",
                                (action.id, action.digest))
        return ApprovalStatus(approved_by=[r[0] for r in rows if r[1] == "approve"],
                              denied_by=[r[0] for r in rows if r[1] == "deny"], required=self.required(action))

    def requester(self, action_id: str) -> str | None:
        rows = self.store.query("SELECT principal FROM approval_requests WHERE action_id = ?", (action_id,))
        return str(rows[0][0]) if rows and rows[0][0] else None

    # the gate tells us ------------------------------------------------------------------

    def on_pending(self, action: PendingAction, caller: Caller) -> None:
        """A new `human` action: remember who asked (team rule) and notify the webhook, if any."""
        with self.store.transaction() as db:
            db.execute("INSERT INTO approval_requests VALUES (?, ?) ON CONFLICT (action_id) DO UPDATE "
                       "SET principal = excluded.principal", (action.id, requester_of(caller)))
        url = self.gate.config.approvals.notify_url
        if url:
            threading.Thread(target=self._notify, args=(url, action), name="safe-mcp-notify", daemon=True).start()

    def _notify(self, url: str, action: PendingAction) -> None:
        statement = {k: v for k, v in action.call.items() if k not in ("dry_run", "idempotency_key")}
        how = ("sign in on the approval page (/approvals) with the team's provider to approve or deny"
               if self.gate.config.approvals.oidc_client_id else
               f"approve with `safe-mcp approve {action.id} --as NAME`")
        body = {
            "text": f"safe-mcp: {action.effect} {action.tool} on {action.target} waits for human approval "
                    f"(action {action.id}, expires {time.strftime('%H:%M:%SZ', time.gmtime(action.expires))}). "
                    f"Review with `safe-mcp pending`; {how}.",
            "action": {"action_id": action.id, "target": action.target, "tool": action.tool, "effect": action.effect,
                       "statement": statement, "preview": action.preview, "expires": action.expires,
                       "approvals_required": self.required(action)},
        }
        webhook.post(url, self.gate.scrub(body), self.gate.config.approvals.notify_retries, f"approval {action.id}")

    # expiry ---------------------------------------------------------------------------------

    def expire_due(self) -> list[str]:
        """Expire every overdue pending action (expiry denies) with a receipt each; return their ids."""
        now = self.gate.clock()
        done = []
        for action in self.store.pending_list():
            if now > action.expires and self.store.transition_pending(action.id, "pending", "expired"):
                self.gate.record(_call(action), Caller(session="approvals", client="safe-mcp/expiry"), Effect(action.effect),
                                 "refuse", "no decision before ttl_s; expiry denies", "expired", tool="expire",
                                 action_id=action.id)
                done.append(action.id)
        return done

    # decisions -----------------------------------------------------------------------------

    def decide(self, action_id: str, name: str, code: str, channel: Channel, approve: bool,
               reason: str = "") -> DecisionResult:
        """Approve or deny a `human` action as `name`, proven by their current TOTP code.

        Names of provider subjects ("oidc:SUB") are refused here: they decide signed in (`decide_signed_in`).

        Raises:
            Refused: unknown or not-pending action, wrong code, self-approval, changed call, already decided.
        """
        def proven() -> str | None:
            if _provider_name(name):
                return f"{name} is a provider subject: sign in on the approval page to decide as them"
            if not _valid_name(name) or not self.approvers.verify(name, code):
                return f"wrong or reused code for approver {name!r}, or no such approver"
            return None

        return self._decide(action_id, name, "", channel, approve, reason, proven,
                            "enter the current code from the authenticator app of an enrolled approver")

    def decide_signed_in(self, action_id: str, subject: str, role: str | None, display: str, channel: Channel,
                         approve: bool, reason: str = "", code: str = "") -> DecisionResult:
        """Approve or deny as "oidc:`subject`", whom the team's provider proved (role from its claims).

        Only roles approver and admin decide. With `[approvals] totp` on, `code` must also be the current TOTP
        code of approver "oidc:SUB". Two decisions by one subject are one: the approvals are keyed by subject.

        Raises:
            Refused: as `decide`, and a role that may not approve or a missing/wrong code when TOTP is on.
        """
        name = f"oidc:{subject}"

        def proven() -> str | None:
            if not _provider_name(name):
                return f"the provider's subject {subject!r} cannot name an approver"
            if role not in ("approver", "admin"):
                return f"{name} signed in with role {role or 'none'}; only approver or admin may decide"
            if self.gate.config.approvals.totp_required() and not self.approvers.verify(name, code):
                return f"wrong or reused code for approver {name}, or {name} is not enrolled for TOTP"
            return None

        remedy = ("ask an admin to grant you an approver group at the provider" if role not in ("approver", "admin")
                  else f"enter the current code of your authenticator (enrol once: safe-mcp approver add {name})")
        return self._decide(action_id, name, display, channel, approve, reason, proven, remedy)

    def _decide(self, action_id: str, name: str, display: str, channel: Channel, approve: bool, reason: str,
                proven: Callable[[], str | None], remedy: str) -> DecisionResult:
        """The one decision path: `proven()` says why the approver is not proven (None: proven)."""
        self.expire_due()
        verb = "approve" if approve else "deny"
        shown = f"{name} ({display})" if display else name
        who = Caller(session="approvals", client=f"approver:{shown} via {channel}")
        action = self.store.pending(action_id)
        if action is None:
            raise Refused(f"no pending action has id {action_id!r}", "list them with: safe-mcp pending")
        call, effect = _call(action), Effect(action.effect)

        def refuse(why: str, remedy: str = "") -> None:
            self.gate.refuse(call, who, effect, why, remedy, tool=verb, action_id=action_id)

        if action.confirm_by != ConfirmMode.HUMAN.value:
            refuse(f"action {action_id} is confirmed by the agent, not approved by a human")
        if action.state != "pending":
            refuse(f"action {action_id} is {action.state}; an approval is single use",
                   "the agent must repeat the call to get a new action")
        why = proven()
        if why is not None:
            refuse(why, remedy)
        requester = self.requester(action_id)
        if approve and requester is not None and requester == name:
            refuse(f"{name} requested action {action_id} and cannot approve it", "another approver must approve it")
        if action_digest(call, self.gate.policy_digest) != action.digest:
            self.store.transition_pending(action_id, "pending", "invalid")
            refuse("the call or the policy changed since this action was requested; the approval would not cover it",
                   "the agent must repeat the call to get a new action")
        try:
            with self.store.transaction() as db:
                db.execute("INSERT INTO approvals VALUES (?, ?, ?, ?, ?, ?, ?)",
                           (action_id, name, channel, verb, action.digest, time.time(), reason[:500]))
        except StateError as exc:
            try:
                decided = bool(self.store.query("SELECT 1 FROM approvals WHERE action_id = ? AND approver = ?",
                                                (action_id, name)))
            except StateError:
                decided = False
            if decided:
                refuse(f"{name} already decided on action {action_id}", "another approver must decide")
            refuse(f"the decision could not be recorded ({exc}); nothing was decided",
                   "check the state store, then decide again")
        if not approve:
            self.store.transition_pending(action_id, "pending", "denied")
        status = self.status(action)
        text = (f"denied by {shown} via {channel}" + (f": {reason}" if reason else "") if not approve else
                f"approved by {shown} via {channel} ({len(status.approved_by)} of {status.required})")
        receipt = self.gate.record(call, who, effect, verb, text, "denied" if not approve else "approved",
                                   tool=verb, action_id=action_id)
        if approve and status.approved:
            message = f"action {action_id} is approved; it runs once when the agent confirms it"
        elif approve:
            message = f"{len(status.approved_by)} of {status.required} approvals for action {action_id}"
        else:
            message = f"action {action_id} is denied; it will not run"
        return DecisionResult(action_id=action_id, decision=verb, approver=name, channel=channel,
                              receipt_id=receipt.id, status=status, message=message)

    def approve_by_elicitation(self, action_id: str, client: str) -> bool:
        """The MCP client's user accepted an elicitation for a trusted target: count it as one approval."""
        action = self.store.pending(action_id)
        if action is None or action.state != "pending" or action.confirm_by != ConfirmMode.HUMAN.value:
            return False
        target = self.gate.config.targets.get(action.target)
        if target is None or not target.trust_client_elicitation:
            return False
        call = _call(action)
        if action_digest(call, self.gate.policy_digest) != action.digest:
            return False
        name = f"elicitation:{client}"
        try:
            with self.store.transaction() as db:
                db.execute("INSERT INTO approvals VALUES (?, ?, 'elicitation', 'approve', ?, ?, '')",
                           (action_id, name, action.digest, time.time()))
        except StateError:
            return False
        status = self.status(action)
        self.gate.record(call, Caller(session="approvals", client=f"{name} via elicitation"), Effect(action.effect),
                         "approve", f"approved via client elicitation ({len(status.approved_by)} of {status.required})",
                         "approved", tool="approve", action_id=action_id)
        return True

    def elicitation_prompt(self, action_id: str) -> str | None:
        """The question to elicit for a waiting `human` action on a trusted target; None when not to ask."""
        action = self.store.pending(action_id)
        if action is None or action.state != "pending" or action.confirm_by != ConfirmMode.HUMAN.value:
            return None
        target = self.gate.config.targets.get(action.target)
        if target is None or not target.trust_client_elicitation or self.status(action).approved:
            return None
        if self.gate.clock() > action.expires:
            return None
        statement = {k: v for k, v in action.call.items() if k not in ("dry_run", "idempotency_key")}
        return self.gate.scrub.text(f"safe-mcp: approve this {action.effect} {action.tool} on {action.target}? "
                               f"{json.dumps(statement, default=str)} preview: {json.dumps(action.preview, default=str)}")

    def waiting(self, action_id: str) -> bool:
        """True while a `human` action still waits for a decision (not approved, denied, expired or gone)."""
        self.expire_due()
        action = self.store.pending(action_id)
        if action is None or action.state != "pending" or action.confirm_by != ConfirmMode.HUMAN.value:
            return False
        status = self.status(action)
        return not status.denied_by and not status.approved

    def listing(self) -> list[dict[str, Any]]:
        """Pending `human` actions with their full preview, for the CLI and the web page (no digests)."""
        self.expire_due()
        out = []
        for a in self.store.pending_list():
            if a.confirm_by != ConfirmMode.HUMAN.value:
                continue
            status = self.status(a)
            out.append({
                "action_id": a.id, "target": a.target, "tool": a.tool, "effect": a.effect,
                "statement": {k: v for k, v in a.call.items() if k not in ("dry_run", "idempotency_key")},
                "preview": a.preview, "created": a.created, "expires": a.expires,
                "approved_by": status.approved_by, "required": status.required,
                "requested_by": self.requester(a.id),
            })
        return out


def requester_of(caller: Caller) -> str | None:
    """The token name of an authenticated HTTP caller (the server records it as "token:NAME via CLIENT")."""
    if caller.client.startswith("token:"):
        return caller.client[len("token:"):].split(" via ", 1)[0] or None
    return None


def _call(action: PendingAction) -> Call:
    return Call(target=action.target, tool=action.tool, args=action.call)
