"""Human approval end to end: an MCP client asks, a human approves with a TOTP code, the gate runs it once."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from approval_helpers import IRREVERSIBLE, Approver, cli, columns, make, receipts
from support import allow_inserts, call, connect, fail_inserts, ledger_rows, refused, tamper_pending

pytestmark = pytest.mark.anyio


async def test_agent_cannot_confirm_and_cli_approval_runs_once(tmp_path: Path) -> None:
    cfg = make(tmp_path)
    alice = Approver(cfg, "alice")
    assert "otpauth://totp/" in alice.uri
    assert "\u2580" in alice.output or "\u2588" in alice.output  # a terminal QR code
    assert (tmp_path / ".safe-mcp" / "approvers.key").stat().st_mode & 0o777 == 0o600
    async with connect(cfg, "stdio") as c:
        p = await call(c, "sql_execute", target="admin", sql=IRREVERSIBLE)
        assert p["status"] == "pending" and p["pending"]["confirm_by"] == "human"
        action = p["pending"]["action_id"]
        told = (p["message"] + p["pending"]["how_to_confirm"]).lower()
        for hint in ("safe-mcp approve", "/approvals", "approver", "code", "totp", "--as"):
            assert hint not in told
        text = await refused(c, "confirm", action_id=action)
        assert "human" in text and "safe-mcp approve" not in text

        listed = cli(cfg, "pending")
        assert action in listed.stdout and "ALTER TABLE orders" in listed.stdout

        wrong = alice.approve(cfg, action, code="000000" if alice.totp.now() != "000000" else "111111")
        assert wrong.returncode == 1 and "wrong or reused code" in wrong.stderr
        await refused(c, "confirm", action_id=action)
        code = alice.code()
        ok = alice.approve(cfg, action, code=code)
        assert ok.returncode == 0, ok.stderr
        assert "approved" in ok.stdout
        again = alice.approve(cfg, action, code=code)  # the same code twice: a replay
        assert again.returncode == 1

        done = await call(c, "confirm", action_id=action)
        assert done["status"] == "ok"
        assert "note" in columns(tmp_path)
        assert "single use" in await refused(c, "confirm", action_id=action)
        replay = alice.approve(cfg, action)
        assert replay.returncode == 1 and "single use" in replay.stderr

    approvals = receipts(tmp_path, "approve")
    assert [r["outcome"] for r in approvals] == ["refused", "approved", "refused", "refused"]
    assert all(r["client"] == "approver:alice via cli" for r in approvals)
    executed = [r for r in receipts(tmp_path, "sql_execute") if r["outcome"] == "executed"]
    assert len(executed) == 1 and executed[0]["action_id"] == action
    confirmed = [r for r in receipts(tmp_path, "sql_execute") if r["outcome"] == "confirmed"]
    assert "approved by alice" in str(confirmed[0]["reason"])
    stored = ledger_rows(cfg, "SELECT name, secret FROM approvers")
    assert stored and all(alice.totp.secret.encode() not in bytes(secret) for _name, secret in stored)  # type: ignore[arg-type]
    if (tmp_path / ".safe-mcp" / "state.db").exists():
        assert alice.totp.secret not in (tmp_path / ".safe-mcp" / "state.db").read_bytes().decode("latin-1")
    assert cli(cfg, "receipts", "verify").returncode == 0


async def test_an_approval_the_state_cannot_record_counts_for_nothing_and_says_so(tmp_path: Path) -> None:
    cfg = make(tmp_path)
    alice = Approver(cfg, "alice")
    async with connect(cfg, "stdio") as c:
        p = await call(c, "sql_execute", target="admin", sql=IRREVERSIBLE)
        action = p["pending"]["action_id"]
        fail_inserts(cfg, "approvals")
        lost = alice.approve(cfg, action)
        assert lost.returncode == 1, lost.stdout
        assert "could not be recorded" in lost.stderr and "already decided" not in lost.stderr, lost.stderr
        assert "waits for approval" in await refused(c, "confirm", action_id=action)
        assert "note" not in columns(tmp_path)
        allow_inserts(cfg, "approvals")
        ok = alice.approve(cfg, action)
        assert ok.returncode == 0, ok.stderr
        assert (await call(c, "confirm", action_id=action))["status"] == "ok"
    assert "note" in columns(tmp_path)


async def test_expired_action_cannot_be_approved(tmp_path: Path) -> None:
    cfg = make(tmp_path, ttl=1)
    alice = Approver(cfg, "alice")
    async with connect(cfg, "memory") as c:
        p = await call(c, "sql_execute", target="admin", sql=IRREVERSIBLE)
        action = p["pending"]["action_id"]
        time.sleep(1.3)
        r = alice.approve(cfg, action)
        assert r.returncode == 1 and "expired" in r.stderr
        assert "expired" in await refused(c, "confirm", action_id=action)
    assert [r["outcome"] for r in receipts(tmp_path, "expire")] == ["expired"]
    assert "note" not in columns(tmp_path)


async def test_approval_of_a_changed_call_is_refused(tmp_path: Path) -> None:
    cfg = make(tmp_path)
    alice = Approver(cfg, "alice")
    async with connect(cfg, "memory") as c:
        first = (await call(c, "sql_execute", target="admin", sql=IRREVERSIBLE))["pending"]["action_id"]
        second = (await call(c, "sql_execute", target="admin", sql=IRREVERSIBLE.replace("note", "memo")))["pending"]["action_id"]
    # Someone with access to the state store swaps the statement after the preview: the digest no longer matches.
    tamper_pending(cfg, first, sql="DROP TABLE customers")
    r = alice.approve(cfg, first)
    assert r.returncode == 1 and "changed since" in r.stderr
    # Approved, then the policy changes before the agent confirms: the approval does not carry over.
    assert alice.approve(cfg, second).returncode == 0
    make(tmp_path, confirm_extra="write = \"agent\"")
    async with connect(cfg, "memory") as c:
        assert "changed since" in await refused(c, "confirm", action_id=second)
    assert columns(tmp_path).count("memo") == 0 and "note" not in columns(tmp_path)


async def test_team_rules_two_approvers_and_no_self_approval(tmp_path: Path) -> None:
    cfg = make(tmp_path, target_extra="approvals_required = 2")
    alice, bob = Approver(cfg, "alice"), Approver(cfg, "bob")
    async with connect(cfg, "memory") as c:
        action = (await call(c, "sql_execute", target="admin", sql=IRREVERSIBLE))["pending"]["action_id"]
        assert alice.approve(cfg, action).returncode == 0
        text = await refused(c, "confirm", action_id=action)
        assert "human" in text
        twice = alice.approve(cfg, action)
        assert twice.returncode == 1 and "already decided" in twice.stderr
        assert bob.approve(cfg, action).returncode == 0
        done = await call(c, "confirm", action_id=action)
        assert done["status"] == "ok" and "note" in columns(tmp_path)

    # A caller authenticated by a per-caller token (HTTP mode) cannot approve what it requested.
    from safe_mcp.adapter import Call
    from safe_mcp.errors import Refused
    from safe_mcp.gate.pipeline import Caller
    from safe_mcp.gate.runtime import Runtime
    from safe_mcp.trust.config import load_config

    rt = Runtime(load_config(cfg))
    try:
        r = rt.gate.run(Call(target="admin", tool="sql_execute", args={"sql": IRREVERSIBLE.replace("note", "memo")}),
                        Caller(session="s1", client="token:bob via cursor/1.0"))
        assert r.pending is not None
        with pytest.raises(Refused, match="cannot approve it"):
            rt.gate.approvals.decide(r.pending.action_id, "bob", bob.code(), "web", True)
        assert rt.gate.approvals.listing()[0]["requested_by"] == "bob"
    finally:
        rt.close()


async def test_deny_stops_the_action(tmp_path: Path) -> None:
    cfg = make(tmp_path)
    alice = Approver(cfg, "alice")
    async with connect(cfg, "memory") as c:
        action = (await call(c, "sql_execute", target="admin", sql=IRREVERSIBLE))["pending"]["action_id"]
        d = alice.deny(cfg, action, reason="not today")
        assert d.returncode == 0, d.stderr
        assert "denied" in await refused(c, "confirm", action_id=action)
    denial = receipts(tmp_path, "deny")
    assert denial[0]["outcome"] == "denied" and "not today" in str(denial[0]["reason"])
    assert denial[0]["client"] == "approver:alice via cli"
    assert "note" not in columns(tmp_path)
