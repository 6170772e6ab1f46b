"""The adapter contract of the mail kinds, driven on the adapter itself against a real outbox file and a
real SMTP server: which sends are compensable, the intent journal in the outbox, reconcile, the undo
state checks, and that an idempotency key queues at most once even when the gate's record is lost."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mailserver import Server
from safe_mcp_email import SmtpAdapter, SmtpSettings
from support import free_port

from safe_mcp.adapter import Budget, Call, Classification
from safe_mcp.effects import Effect
from safe_mcp.errors import AdapterError, Drifted
from safe_mcp.gate.pipeline import enforce_effect_table

SEND = {"to": ["Bob <bob@Example.COM>"], "subject": "s", "body": "b"}


def adapter(tmp: Path, port: int = 1, hold_s: float = 30) -> SmtpAdapter:
    settings = SmtpSettings.model_validate({
        "host": "127.0.0.1", "port": port, "tls": "none", "from": "agent@example.com",
        "allow_recipients": ["*@example.com"], "hold_s": hold_s, "poll_s": 0.05})
    return SmtpAdapter("mail", settings, {}, base_dir=str(tmp), state_dir=str(tmp / "state"))


def budget(intent: str | None) -> Budget:
    return Budget(rows_returned=100, rows_affected=100, allowed_effect=Effect.WRITE, intent_id=intent)


def send(a: SmtpAdapter, intent: str, **args: Any) -> tuple[Classification, Any]:
    c = Call(target="mail", tool="email_send", args={**SEND, **args})
    cls = enforce_effect_table(a.classify(c))
    return cls, a.execute(c, cls, budget(intent))


@pytest.fixture
def mail(tmp_path: Path) -> Iterator[SmtpAdapter]:
    a = adapter(tmp_path)
    yield a
    a.close()


@pytest.fixture
def sender() -> Iterator[Any]:
    """Runs an adapter's background sender (the real one); call what it returns to stop it."""
    stops: list[Any] = []

    def start(a: SmtpAdapter) -> Any:
        stop = threading.Event()
        t = threading.Thread(target=a.run_background, args=(stop,), daemon=True)
        t.start()

        def halt() -> None:
            stop.set()
            t.join(10)
        stops.append(halt)
        return halt

    yield start
    for halt in stops:
        halt()


def wait_for(predicate: Any, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("timed out")


# ---------------------------------------------------------------------------------------- classification


def test_a_held_send_is_a_compensable_write_and_the_outbox_a_read(mail: SmtpAdapter) -> None:
    cls = enforce_effect_table(mail.classify(Call(target="mail", tool="email_send", args=SEND)))
    assert cls.effect is Effect.WRITE and cls.compensable is True
    read = enforce_effect_table(mail.classify(Call(target="mail", tool="email_outbox")))
    assert read.effect is Effect.READ
    assert mail.journals is True


def test_hold_zero_is_irreversible_and_records_no_compensation(tmp_path: Path) -> None:
    a = adapter(tmp_path, hold_s=0)
    try:
        cls, out = send(a, "rcpt_zero")
        assert cls.effect is Effect.IRREVERSIBLE and cls.compensable is False
        assert out.compensation is None and out.affected == 1
        r = a.reconcile("rcpt_zero", Call(target="mail", tool="email_send", args=SEND))
        assert r.state == "executed" and r.outcome is not None and r.outcome.compensation is None
    finally:
        a.close()


# ---------------------------------------------------------------------------------------- journal


def test_the_queueing_row_carries_the_intent_and_reconcile_reads_it(mail: SmtpAdapter, tmp_path: Path) -> None:
    call = Call(target="mail", tool="email_send", args=SEND)
    cls, out = send(mail, "rcpt_queued")
    assert cls.compensable and out.compensation == {"outbox_id": out.result["outbox_id"], "affected": 1}
    with sqlite3.connect(tmp_path / "state" / "outbox-mail.db") as db:  # the target's own file
        assert db.execute("SELECT intent_id, state FROM messages").fetchall() == [("rcpt_queued", "held")]
    r = mail.reconcile("rcpt_queued", call)
    assert r.state == "executed" and r.outcome is not None
    assert r.outcome.compensation == out.compensation and r.outcome.affected == out.affected
    assert r.outcome.result["outbox_id"] == out.result["outbox_id"]
    assert mail.reconcile("rcpt_never_ran", call).state == "not_executed"


def test_a_refused_send_journals_nothing(mail: SmtpAdapter) -> None:
    with pytest.raises(AdapterError):
        send(mail, "rcpt_refused", to=["evil@attacker.test"])
    assert mail.reconcile("rcpt_refused", Call(target="mail", tool="email_send", args=SEND)).state == "not_executed"
    assert mail.outbox.latest() == []


def test_a_likely_duplicate_has_an_empty_compensation_and_journals_nothing(mail: SmtpAdapter) -> None:
    _, first = send(mail, "rcpt_first")
    cls, dup = send(mail, "rcpt_dup", to=["bob@example.com"])
    assert cls.compensable and dup.affected == 0 and dup.result["likely_duplicate"] is True
    assert dup.compensation is not None and dup.compensation["outbox_id"] is None
    undone = mail.compensate(dup.compensation, budget("rcpt_undo_dup"))
    assert undone.affected == 0
    row = mail.outbox.get(first.result["outbox_id"])
    assert row is not None and row.state == "held", "the duplicate's undo must not cancel the first message"
    assert mail.reconcile("rcpt_dup", Call(target="mail", tool="email_send", args=SEND)).state == "not_executed"


def test_undo_journals_its_own_intent(mail: SmtpAdapter) -> None:
    _, out = send(mail, "rcpt_send")
    done = mail.compensate(out.compensation, budget("rcpt_undo"))
    assert done.affected == 1
    r = mail.reconcile("rcpt_undo", Call(target="mail", tool="undo"))
    assert r.state == "executed" and r.outcome is not None and r.outcome.result["state"] == "cancelled"
    row = mail.outbox.get(out.result["outbox_id"])
    assert row is not None and row.state == "cancelled" and row.cancel_intent == "rcpt_undo"


def test_an_outbox_from_before_the_journal_is_upgraded(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    with sqlite3.connect(state / "outbox-mail.db") as db:
        from safe_mcp_email.outbox import _SCHEMA
        db.executescript(_SCHEMA)  # the columns of the first release only
    a = adapter(tmp_path)
    try:
        _, out = send(a, "rcpt_after_upgrade")
        assert a.reconcile("rcpt_after_upgrade", Call(target="mail", tool="email_send")).state == "executed"
        assert out.compensation is not None
    finally:
        a.close()


# ---------------------------------------------------------------------------------------- against a server


def test_undo_after_it_left_refuses_naming_that_it_was_sent(tmp_path: Path, sender: Any) -> None:
    port = free_port()
    with Server(port) as smtp:
        a = adapter(tmp_path, port, hold_s=0.1)
        try:
            _, out = send(a, "rcpt_gone")
            halt = sender(a)
            wait_for(lambda: (r := a.outbox.get(out.result["outbox_id"])) is not None and r.state == "sent")
            with pytest.raises(AdapterError) as exc:
                a.compensate(out.compensation, budget("rcpt_late_undo"))
            assert "already sent" in str(exc.value) and "irreversible" in str(exc.value)
            assert len(smtp.received) == 1
            row = a.outbox.get(out.result["outbox_id"])
            assert row is not None and row.state == "sent" and row.cancel_intent is None
            assert a.reconcile("rcpt_late_undo", Call(target="mail", tool="undo")).state == "not_executed"
        finally:
            halt()
            a.close()


def test_an_idempotency_key_queues_once_even_when_the_gate_lost_its_record(tmp_path: Path, sender: Any) -> None:
    """The gate answers a repeated key itself; if its record is gone (a crash after the outbox committed),
    the outbox still holds the key, so the retry returns the first message instead of a second email."""
    port = free_port()
    with Server(port) as smtp:
        a = adapter(tmp_path, port, hold_s=0.2)
        try:
            _, first = send(a, "rcpt_k1", idempotency_key="order-7")
            _, again = send(a, "rcpt_k2", idempotency_key="order-7", to=["bob@example.com"])
            assert again.affected == 0 and again.result["duplicate_of"] == first.result["outbox_id"]
            with pytest.raises(AdapterError, match="idempotency_key"):
                send(a, "rcpt_k3", idempotency_key="order-7", body="another body")
            halt = sender(a)
            wait_for(lambda: len(smtp.received) == 1)
            time.sleep(0.5)
            _, late = send(a, "rcpt_k4", idempotency_key="order-7")  # even after it left
            assert late.affected == 0 and late.result["state"] == "sent"
            time.sleep(0.5)
            assert len(smtp.received) == 1 and len(a.outbox.latest()) == 1
        finally:
            halt()
            a.close()


def test_at_confirm_a_message_other_than_the_confirmed_one_is_not_queued(tmp_path: Path) -> None:
    a = adapter(tmp_path, hold_s=0)
    try:
        c = Call(target="mail", tool="email_send", args=SEND)
        cls = enforce_effect_table(a.classify(c))
        confirmed = a.preview(c, cls, budget(None))
        assert confirmed.fingerprint
        stale = confirmed.model_copy(update={"fingerprint": "0" * 64})
        with pytest.raises(Drifted) as exc:
            a.execute(c, cls, budget("rcpt_stale").model_copy(update={"expect": stale}))
        assert exc.value.preview.fingerprint == confirmed.fingerprint
        assert a.outbox.latest() == [] and a.reconcile("rcpt_stale", c).state == "not_executed"
        out = a.execute(c, cls, budget("rcpt_ok").model_copy(update={"expect": confirmed}))
        assert out.affected == 1 and a.reconcile("rcpt_ok", c).state == "executed"
    finally:
        a.close()
