"""A process killed between its write and the write's outcome receipt: at the next start the intent is
settled from the target's own journal, its idempotency key is never left stuck, and undo still works.

The writes run in a child process that SIGKILLs itself at the chosen point (tests/crash/kvadapter.py),
and every assertion reads the target's table, not only what safe-mcp says.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import write_config

import safe_mcp.registry
from safe_mcp.adapter import Adapter, Call
from safe_mcp.errors import Refused
from safe_mcp.gate.pipeline import Caller
from safe_mcp.gate.runtime import Runtime
from safe_mcp.trust.config import load_config

HERE = Path(__file__).parent

CHILD = """
import sys, json
sys.path[:0] = [{here!r}, {tests!r}]
import safe_mcp.registry
from kvadapter import KvAdapter
real = safe_mcp.registry.load_adapter
safe_mcp.registry.load_adapter = lambda kind, **kw: KvAdapter if kind == "kv" else real(kind, **kw)
from safe_mcp.adapter import Call
from safe_mcp.trust.config import load_config
from safe_mcp.gate.pipeline import Caller
from safe_mcp.gate.runtime import Runtime
rt = Runtime(load_config({cfg!r}))
r = rt.gate.run(Call(target="kv", tool="sql_execute", args=json.loads({args!r})), Caller(session="s1", run_id="run1"))
print(r.model_dump_json())
rt.close()
"""


@pytest.fixture(autouse=True)
def kv_adapter(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    from kvadapter import KvAdapter

    real = safe_mcp.registry.load_adapter

    def load(kind: str, **kw: Any) -> type[Adapter]:
        return KvAdapter if kind == "kv" else real(kind, **kw)

    monkeypatch.syspath_prepend(str(HERE))
    monkeypatch.setattr(safe_mcp.registry, "load_adapter", load)
    yield


def _config(tmp_path: Path, journal: bool = True) -> Path:
    db = tmp_path / "kv.db"
    return write_config(tmp_path, f'[targets.kv]\nkind = "kv"\npath = "{db}"\naccess = "read-write"\n'
                                  f'journal = {"true" if journal else "false"}\n'
                                  f'[state]\npath = "{tmp_path / "state"}"\n')


def _child(cfg: Path, crash_at: str, **args: Any) -> subprocess.CompletedProcess[str]:
    code = CHILD.format(here=str(HERE), tests=str(HERE.parent), cfg=str(cfg), args=json.dumps(args))
    env = {**os.environ, "CRASH_AT": crash_at}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)


def _value(tmp_path: Path, key: str) -> str | None:
    with sqlite3.connect(tmp_path / "kv.db") as db:
        row = db.execute("SELECT v FROM kv WHERE k = ?", (key,)).fetchone()
    return row[0] if row else None


def _outcomes(rt: Runtime) -> list[str]:
    return [r.outcome for r in rt.store.receipts(100)]


def test_a_write_committed_before_the_kill_gets_its_receipt_and_undo(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    died = _child(cfg, "after_commit", key="a", value="new", idempotency_key="k1")
    assert died.returncode == -9, died.stderr
    assert _value(tmp_path, "a") == "new"  # committed in the target

    rt = Runtime(load_config(cfg))
    try:
        assert [became for _i, became in rt.reconciled] == ["executed"]
        assert rt.store.open_intents() == []
        executed = [r for r in rt.store.receipts(100) if r.outcome == "executed"]
        assert len(executed) == 1 and "reconciled after a crash" in executed[0].reason
        assert executed[0].compensation_id and executed[0].run_id == "run1"
        # The retry returns the first receipt and runs nothing again.
        again = rt.gate.run(Call(target="kv", tool="sql_execute", args={"key": "a", "value": "new", "idempotency_key": "k1"}),
                            Caller(session="s2"))
        assert again.status == "duplicate" and again.receipt_id == executed[0].id
        # Undo restores the row the crashed write changed.
        rt.gate.undo(executed[0].id, Caller(session="s2"))
        assert _value(tmp_path, "a") is None
        assert rt.store.verify().ok
    finally:
        rt.close()


def test_a_write_killed_before_commit_is_not_executed_and_its_retry_runs_once(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    died = _child(cfg, "before_commit", key="b", value="new", idempotency_key="k2")
    assert died.returncode == -9
    assert _value(tmp_path, "b") is None  # nothing committed

    rt = Runtime(load_config(cfg))
    try:
        assert [became for _i, became in rt.reconciled] == ["not_executed"]
        assert "not_executed" in _outcomes(rt)
        retry = rt.gate.run(Call(target="kv", tool="sql_execute", args={"key": "b", "value": "new", "idempotency_key": "k2"}),
                            Caller(session="s2"))
        assert retry.status == "ok"
        assert _value(tmp_path, "b") == "new"
        second = rt.gate.run(Call(target="kv", tool="sql_execute", args={"key": "b", "value": "new", "idempotency_key": "k2"}),
                             Caller(session="s2"))
        assert second.status == "duplicate" and second.receipt_id == retry.receipt_id
    finally:
        rt.close()


def test_a_target_that_cannot_say_keeps_the_key_refused_until_a_human_settles_it(tmp_path: Path) -> None:
    cfg = _config(tmp_path, journal=False)
    assert _child(cfg, "after_commit", key="c", value="new", idempotency_key="k3").returncode == -9

    rt = Runtime(load_config(cfg))
    try:
        [(intent, became)] = rt.reconciled
        assert became == "unknown"
        retry = Call(target="kv", tool="sql_execute", args={"key": "c", "value": "new", "idempotency_key": "k3"})
        with pytest.raises(Refused) as refused:
            rt.gate.run(retry, Caller(session="s2"))
        text = refused.value.text()
        assert intent.id in text and "safe-mcp reconcile" in text and "running now" not in text
        assert refused.value.receipt_id
    finally:
        rt.close()
    # A human checks the target and says it ran: the retry then returns that receipt.
    out = subprocess.run([sys.executable, "-c", CLI.format(here=str(HERE), tests=str(HERE.parent)), "reconcile",
                          intent.id, "--executed", "--as", "alice", "--config", str(cfg)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    rt = Runtime(load_config(cfg))
    try:
        again = rt.gate.run(retry, Caller(session="s3"))
        assert again.status == "duplicate"
        assert _value(tmp_path, "c") == "new"
        settled = rt.store.receipt(again.receipt_id)
        assert settled is not None and "settled by alice" in settled.reason
    finally:
        rt.close()


def test_reconcile_lists_unsettled_intents_and_settles_not_executed(tmp_path: Path) -> None:
    cfg = _config(tmp_path, journal=False)
    assert _child(cfg, "before_commit", key="d", value="new", idempotency_key="k4").returncode == -9
    cli = [sys.executable, "-c", CLI.format(here=str(HERE), tests=str(HERE.parent)), "reconcile", "--config", str(cfg)]
    listed = subprocess.run(cli, capture_output=True, text=True, timeout=60)
    assert listed.returncode == 1 and "unknown" in listed.stdout and "--not-executed" in listed.stdout
    intent_id = next(w for w in listed.stdout.split() if w.startswith("rcpt_"))
    settled = subprocess.run([*cli, intent_id, "--not-executed"], capture_output=True, text=True, timeout=60)
    assert settled.returncode == 0, settled.stdout + settled.stderr
    assert subprocess.run(cli, capture_output=True, text=True, timeout=60).returncode == 0
    rt = Runtime(load_config(cfg))
    try:
        retry = rt.gate.run(Call(target="kv", tool="sql_execute", args={"key": "d", "value": "new", "idempotency_key": "k4"}),
                            Caller(session="s2"))
        assert retry.status == "ok" and _value(tmp_path, "d") == "new"
    finally:
        rt.close()


def test_a_claim_left_by_a_dead_process_before_its_intent_is_released(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    rt = Runtime(load_config(cfg))
    rt.store.claim_idempotency("kv", "k5", rt.gate._call_digest(
        Call(target="kv", tool="sql_execute", args={"key": "e", "value": "v", "idempotency_key": "k5"})),
        f"{os.uname().nodename}/999999999/1")
    try:
        r = rt.gate.run(Call(target="kv", tool="sql_execute", args={"key": "e", "value": "v", "idempotency_key": "k5"}),
                        Caller(session="s"))
        assert r.status == "ok" and _value(tmp_path, "e") == "v"
    finally:
        rt.close()


CLI = """
import sys
sys.path[:0] = [{here!r}, {tests!r}]
import safe_mcp.registry
from kvadapter import KvAdapter
real = safe_mcp.registry.load_adapter
safe_mcp.registry.load_adapter = lambda kind, **kw: KvAdapter if kind == "kv" else real(kind, **kw)
from safe_mcp.faces.cli import main
sys.exit(main(sys.argv[1:]))
"""
