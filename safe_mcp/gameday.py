"""`safe-mcp gameday`: replay the scenarios of real incidents against a config, changing nothing.

Every scenario is decided by the gate. Calls run only where that changes nothing: targets whose
adapter can make a disposable copy (SQLite) are copied into a sandbox and the scenarios run there
for real; other targets get dry runs (a rolled-back transaction, read calls) or a decision without
execution. The state (receipts,
budgets, breakers) of the run lives in the sandbox too, so the real ledger is untouched.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from safe_mcp.adapter import Call
from safe_mcp.config import Config, StateSettings
from safe_mcp.errors import Refused
from safe_mcp.gate import Caller, Gate
from safe_mcp.runtime import Runtime

__all__ = ["Row", "render", "run_gameday"]


class Row(BaseModel):
    model_config = ConfigDict(frozen=True)

    scenario: str
    target: str
    expected: str
    happened: str
    passed: bool | None  # None: does not apply to this target


def _sandboxed(config: Config, sandbox: Path) -> tuple[Config, set[str]]:
    """The same config with state kept in `sandbox`, and every target its adapter can copy pointed at a
    copy there; returns it with the names of the copied targets."""
    targets, copied = dict(config.targets), set()
    for t in config.targets.values():
        settings = t.adapter_cls.sandbox_copy(t.settings, config.base_dir, str(sandbox))
        if settings is not None:
            targets[t.name] = t.model_copy(update={"settings": settings})
            copied.add(t.name)
    state = StateSettings(path=str(sandbox / ".gameday-state"))
    return config.model_copy(update={"targets": targets, "state": state}), copied


def _biggest_table(gate: Gate, caller: Caller, target: str) -> tuple[str, str] | None:
    """(table, a column) of the table with the most columns, from the target's own schema."""
    try:
        schema = gate.run(Call(target=target, tool="sql_schema", args={}), caller).result.get("tables", [])
    except Refused:
        return None
    tables = [t for t in schema if t.get("columns")]
    if not tables:
        return None
    best = max(tables, key=lambda t: len(t["columns"]))
    col = next((c["name"] for c in best["columns"] if not c.get("pk")), best["columns"][0]["name"])
    return str(best["name"]), str(col)


def _contained(run: Callable[[], Any]) -> tuple[bool, str]:
    """Run one gate call; contained unless it ran (or would run) unconfirmed."""
    try:
        r = run()
    except Refused as exc:
        return True, f"refused: {exc.reason}"[:110]
    status = getattr(r, "status", None)
    if status == "pending":
        return True, f"held for {r.pending.confirm_by} confirmation ({r.affected} rows previewed)"
    if status == "dry_run":
        would = r.result.get("would", "run")
        return would != "run", f"dry run: it would {would} ({r.affected} rows)"[:110]
    if status in ("ok", "duplicate"):
        return False, f"it ran: {r.message}"[:110]
    return True, str(r)[:110]


def run_gameday(config: Config) -> list[Row]:
    sandbox = Path(tempfile.mkdtemp(prefix="safe-mcp-gameday-"))
    rows: list[Row] = []
    try:
        sandboxed, copied = _sandboxed(config, sandbox)
        rt = Runtime(sandboxed, session="gameday")
        gate = rt.gate
        try:
            for t in config.targets.values():
                tools = t.adapter_cls.tools
                caller = Caller(session=f"gameday-{t.name}", client="safe-mcp gameday")
                if "sql_execute" in tools:
                    rows.extend(_sql_scenarios(gate, caller, t.name, t.name in copied))
                if "aws_call" in tools:
                    for service, op, params in (("rds", "DeleteDBSnapshot", {"DBSnapshotIdentifier": "gameday"}),
                                                ("ec2", "DeleteSnapshot", {"SnapshotId": "snap-0123456789abcdef0"}),
                                                ("backup", "DeleteRecoveryPoint",
                                                 {"BackupVaultName": "gameday", "RecoveryPointArn": "arn:aws:backup:x"})):
                        aws = Call(target=t.name, tool="aws_call",
                                   args={"service": service, "operation": op, "params": params})
                        try:
                            d = gate.assess(aws, caller)
                            happened, passed = f"allowed ({d.verdict.value}: {d.reason})"[:110], False
                        except Refused as exc:
                            happened, passed = f"refused: {exc.reason}"[:110], True
                        rows.append(Row(scenario=f"delete backups ({service} {op})", target=t.name,
                                        expected="forbidden", happened=happened, passed=passed))
                if "email_send" in tools:
                    call = Call(target=t.name, tool="email_send", args={
                        "to": ["gameday@outside.invalid"], "subject": "gameday", "body": "gameday"})
                    try:
                        d = gate.assess(call, caller)
                        happened, passed = f"allowed ({d.reason})"[:110], False
                    except Refused as exc:
                        happened, passed = f"refused: {exc.reason}"[:110], True
                    rows.append(Row(scenario="mail to an outside address", target=t.name,
                                    expected="refused by the recipient allow-list", happened=happened, passed=passed))
        finally:
            rt.close()
    finally:
        shutil.rmtree(sandbox, ignore_errors=True)
    return rows


def _sql_scenarios(gate: Gate, caller: Caller, target: str, sandbox: bool) -> list[Row]:
    rows: list[Row] = []
    found = _biggest_table(gate, caller, target)
    if found is None:
        return [Row(scenario="SQL scenarios", target=target, expected="-",
                    happened="could not read a table to play against (is the database there?)", passed=None)]
    table, col = found
    q = '"' + table.replace('"', '""') + '"'
    c = '"' + col.replace('"', '""') + '"'
    dry = not sandbox

    def sql(text: str, **extra: Any) -> Callable[[], Any]:
        args = {"sql": text, **({"dry_run": True} if dry else {}), **extra}
        return lambda: gate.run(Call(target=target, tool="sql_execute", args=args), caller)

    if sandbox:
        ran = dup = 0
        for _ in range(5):
            try:
                r = gate.run(Call(target=target, tool="sql_execute", args={
                    "sql": f"UPDATE {q} SET {c} = {c} WHERE rowid = (SELECT min(rowid) FROM {q})",
                    "idempotency_key": "gameday-retry"}), caller)
                ran += r.status == "ok"
                dup += r.status == "duplicate"
            except Refused:
                pass
        rows.append(Row(scenario="the same write retried 5 times", target=target, expected="runs once",
                        happened=f"ran {ran}x, {dup} duplicates returned", passed=ran <= 1))
        ran = 0
        stopped = ""
        burst = Caller(session=f"gameday-burst-{target}", client="safe-mcp gameday")
        for i in range(200):
            try:
                gate.run(Call(target=target, tool="sql_execute", args={
                    "sql": f"UPDATE {q} SET {c} = {c} WHERE rowid = (SELECT min(rowid) FROM {q}) AND {i} >= 0"}), burst)
                ran += 1
            except Refused as exc:
                stopped = exc.reason
                break
        by_limit = any(w in stopped for w in ("budget", "writes_per_session", "circuit breaker", "read-only"))
        rows.append(Row(scenario="200 writes in a minute", target=target, expected="stopped by a budget",
                        happened=(f"stopped after {ran}: {stopped}" if stopped else "all 200 ran")[:110],
                        passed=by_limit))
    else:
        lim = gate.config.targets[target].limits
        cap = min(lim.writes_per_minute, lim.writes_per_session)
        rows.append(Row(scenario="200 writes in a minute", target=target, expected="stopped by a budget",
                        happened=f"budgets allow {cap} (writes_per_minute / writes_per_session)", passed=cap < 200))
    # Destructive scenarios last, DROP TABLE at the very end: in the sandbox a loose config really runs them.
    for name, statement in (("mass UPDATE of every row", f"UPDATE {q} SET {c} = {c}"),
                            ("bulk DELETE without WHERE", f"DELETE FROM {q}"),
                            ("DROP TABLE", f"DROP TABLE {q}")):
        ok, what = _contained(sql(statement))
        rows.append(Row(scenario=name, target=target, expected="refused, or held for confirmation",
                        happened=what, passed=ok))

    return rows


def render(rows: list[Row]) -> str:
    width = max(len(r.scenario) for r in rows) if rows else 10
    out = [f"{'scenario':<{width}}  {'target':<12} {'result':<6} what happened (expected)"]
    for r in rows:
        verdict = "n/a" if r.passed is None else ("pass" if r.passed else "FAIL")
        out.append(f"{r.scenario:<{width}}  {r.target:<12} {verdict:<6} {r.happened} ({r.expected})")
    failed = [r for r in rows if r.passed is False]
    out.append("")
    out.append(f"{len(failed)} scenario(s) would have done damage: " + ", ".join(f"{r.scenario} on {r.target}" for r in failed)
               if failed else f"all {sum(r.passed is True for r in rows)} scenarios contained")
    return "\n".join(out)
